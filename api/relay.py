"""`/luma/*`: the routes of the Go `Luma-API` relay, so its clients work against us unchanged.

chatgpt-web-midjourney-proxy, new-api and other relays call these with `Authorization: Bearer
<token>`; here the token is one of our SECRET_KEYs (anything, when none is set). They are thin
views over the same queue: a create is queued like any other and answers at once with a pending
generation (that relay's clients poll `GET /luma/generations/{id}` until it is completed), and
the answers are that relay's: the bare generation object, `{id, presigned_url, public_url}` for
an upload, `{url}` for the download link, and errors as `{"detail": {"reason", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import pool, submissions, uploads
from api.appkeys import REGISTRY, SETTINGS, STORE
from api.auth import KEYRING, Access, Caller
from api.errors import ApiError, InvalidRequest, NotAnImage, NotFound, TooLarge, invalid_fields
from api.extend import ExtendRequest, start_extend
from api.images import DECODER, inspect_image
from api.parse import json_object
from api.respond import json_response
from shared.imagefetch import ImageUnreachable, fetch_image, image_type, public_only_session
from shared.models import CreateRequest
from shared.store import views

PREFIX = "/luma"
DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


class RelayCreate(BaseModel):
    """That relay's GenRequest: the web API's create body."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    user_prompt: str = Field(min_length=1, max_length=5000)
    aspect_ratio: str = "16:9"
    expand_prompt: bool = True
    image_url: str | None = None
    image_end_url: str | None = None


class RelayExtend(RelayCreate):
    user_prompt: str | None = Field(default=None, max_length=5000)  # type: ignore[assignment]


class RelayUpload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1)


RelayHandler = Callable[[web.Request, Caller], Awaitable[web.Response]]


def relay_error(status: int, reason: str, code: str) -> web.Response:
    return web.json_response({"detail": {"reason": reason, "code": code}}, status=status)


def relay_route(handler: RelayHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Bearer auth with our keys, and every error in that relay's shape."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            caller = request.app[KEYRING].authorize(token, Access.HOLDER)
        except ApiError:
            return relay_error(401, "unauthorized secret token", "unauthorized")
        try:
            return await handler(request, caller)
        except ApiError as error:
            response = relay_error(error.status, error.message, error.code)
            response.headers.update(error.headers)
            return response

    return guarded


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(await json_object(request))
    except ValidationError as exc:
        raise invalid_fields(exc) from None


async def _view(request: web.Request, owner: str, gen_id: str) -> dict[str, Any]:
    record = await request.app[STORE].get_owned(owner, gen_id)
    if record is None:
        raise NotFound("Generation not found")
    [shown] = views([record], await request.app[STORE].places([record]))
    return shown


@relay_route
async def create(request: web.Request, caller: Caller) -> web.Response:
    """POST /luma/generations: queue it; the pending generation at once (201, as that relay)."""
    body: RelayCreate = await _body(request, RelayCreate)
    try:
        generation = CreateRequest(
            prompt=body.user_prompt,
            aspect_ratio=body.aspect_ratio,
            expand_prompt=body.expand_prompt,
            # The relay's clients send "" for no image.
            image=body.image_url or None,
            image_end=body.image_end_url or None,
        )
    except ValidationError as exc:
        raise invalid_fields(exc) from None
    done = await submissions.submit(request, caller, [generation], kind="luma", body=body.model_dump())
    return json_response(done.views[0], status=201, headers=done.headers)


@relay_route
async def extend(request: web.Request, caller: Caller) -> web.Response:
    """POST /luma/generations/{id}/extend: continue a completed generation."""
    body: RelayExtend = await _body(request, RelayExtend)
    done = await start_extend(
        request, caller, request.match_info["id"], ExtendRequest(prompt=body.user_prompt or None)
    )
    return json_response(done.views[0], status=201, headers=done.headers)


@relay_route
async def get_generation(request: web.Request, caller: Caller) -> web.Response:
    """GET /luma/generations/{id}: the generation object, as the web API shapes it."""
    return json_response(await _view(request, caller.owner, request.match_info["id"]))


@relay_route
async def download_video_url(request: web.Request, caller: Caller) -> web.Response:
    """GET /luma/generations/{id}/download_video_url: `{url}`, watermark-free where there is one."""
    shown = await _view(request, caller.owner, request.match_info["id"])
    video = shown.get("video") or {}
    url = video.get("download_url") or video.get("url")
    if not url:
        raise InvalidRequest("Video is not ready", code="video_not_ready")
    return json_response({"url": url})


@relay_route
async def file_upload(request: web.Request, caller: Caller) -> web.Response:
    """POST /luma/generations/file_upload `{"url": http URL or data URI}`: put the image on an account."""
    body: RelayUpload = await _body(request, RelayUpload)
    settings = request.app[SETTINGS]
    data, _ = await _image_from(body.url, settings.upload_max_bytes, settings.allow_private_networks)
    # Decoded whole, as a multipart upload is (api/images.py), before it is taken.
    kind = await asyncio.get_running_loop().run_in_executor(
        request.app[DECODER], inspect_image, data, settings.upload_max_pixels
    )
    image = uploads.Image(data=data, content_type=kind.content_type, filename=f"file.{kind.extension}")
    result = await uploads.hand_to_worker(request.app, image)
    return json_response(
        {"id": result.id, "presigned_url": result.presigned_url, "public_url": result.public_url}
    )


async def _image_from(source: str, max_bytes: int, allow_private: bool) -> tuple[bytes, str]:
    """The bytes of a data URI, or of an http(s) URL fetched within bounds from a public address."""
    if DATA_URI.match(source):
        try:
            data = base64.b64decode(source[source.index(",") + 1 :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("url: the data URI is not valid base64") from None
        if len(data) > max_bytes:
            raise TooLarge(f"the image is larger than {max_bytes} bytes")
        kind = image_type(data)
        if kind is None:
            raise NotAnImage
        return data, kind
    if not source.startswith(("http://", "https://")):
        raise InvalidRequest("url: must be an http(s) URL or a data:image/...;base64, URI")
    async with public_only_session(allow_private) as session:
        try:
            fetched = await fetch_image(
                session, source, max_bytes=max_bytes, within=20.0, allow_private=allow_private
            )
        except ImageUnreachable as error:
            raise InvalidRequest(f"url: {error}", code="image_unreachable") from None
    return fetched.data, fetched.content_type


@relay_route
async def subscription_usage(request: web.Request, caller: Caller) -> web.Response:
    """GET /luma/subscription/usage: the pool's usage in the web API's shape."""
    return json_response(await pool.usage(request.app[REGISTRY], with_accounts=False))


@relay_route
async def users_me(request: web.Request, caller: Caller) -> web.Response:
    """GET /luma/users/me: who the token is, as a user object (the key holder, never the key)."""
    return json_response(
        {
            "id": caller.owner,
            "name": caller.owner,
            "display_name": caller.owner,
            "email": None,
            "avatar": None,
        }
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{PREFIX}/generations", create)
    r.add_post(f"{PREFIX}/generations/", create)
    r.add_post(f"{PREFIX}/generations/file_upload", file_upload)
    r.add_post(f"{PREFIX}/generations/{{id}}/extend", extend)
    r.add_get(f"{PREFIX}/generations/{{id}}", get_generation)
    r.add_get(f"{PREFIX}/generations/{{id}}/download_video_url", download_video_url)
    r.add_get(f"{PREFIX}/subscription/usage", subscription_usage)
    r.add_get(f"{PREFIX}/users/me", users_me)
