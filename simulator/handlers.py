"""The Luma web API ("photon v1"): one function per endpoint, authenticated by the middleware."""

from __future__ import annotations

import asyncio

from aiohttp import web

from simulator.errors import ApiError
from simulator.keys import ACCOUNT_KEY, STATE_KEY
from simulator.schemas import CreateGenerationBody, FileUploadQuery, ListQuery, parse_body, parse_query
from simulator.state import CapacitySpent
from simulator.views import generation_json, upload_json, usage_json, user_json

GENERATION_NOT_FOUND = "Generation not found"


def base_url(request: web.Request) -> str:
    """Where URLs handed to clients point: the configured base, else the Host the client used."""
    configured = request.app[STATE_KEY].config.public_base_url
    return configured.rstrip("/") if configured else str(request.url.origin())


async def create_generation(request: web.Request) -> web.Response:
    return await _create(request, extend_of=None)


async def _create(request: web.Request, extend_of: str | None) -> web.Response:
    """A create (or an extend of `extend_of`): the 201 array with the new generation first."""
    state, account = request.app[STATE_KEY], request[ACCOUNT_KEY]
    body = parse_body(CreateGenerationBody, await request.read())
    try:
        generation = state.create_generation(
            account,
            prompt=body.user_prompt,
            aspect_ratio=body.aspect_ratio,
            expand_prompt=body.expand_prompt,
            loop=body.loop,
            image_url=body.image_url,
            image_end_url=body.image_end_url,
            extend_of=extend_of,
        )
    except CapacitySpent:
        raise ApiError(403, {"reason": "Maximum usage limit exceeded"}) from None
    hang = state.config.hang_after_create_seconds
    if hang > 0:
        # Already stored and billed: a client that times out here must not create it again.
        await asyncio.sleep(hang)
    return web.json_response([generation_json(generation, state.now(), base_url(request))], status=201)


async def get_generation(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    generation = state.generation_for(request[ACCOUNT_KEY], request.match_info["generation_id"])
    if generation is None:
        raise ApiError(404, GENERATION_NOT_FOUND)
    return web.json_response(generation_json(generation, state.now(), base_url(request)))


async def list_generations(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    query = parse_query(ListQuery, request.query)
    generations = state.list_generations(request[ACCOUNT_KEY], query.offset, query.limit)
    t, base = state.now(), base_url(request)
    return web.json_response([generation_json(g, t, base) for g in generations])


async def download_video_url(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    generation = state.generation_for(request[ACCOUNT_KEY], request.match_info["generation_id"])
    if generation is None:
        raise ApiError(404, GENERATION_NOT_FOUND)
    video = generation_json(generation, state.now(), base_url(request))["video"]
    if video is None:
        raise ApiError(400, "Video is not ready")
    # A presigned link of its own, as Luma's is: not the same string as video.url or download_url.
    return web.json_response({"url": video["download_url"] + "?response-content-disposition=attachment"})


async def extend_generation(request: web.Request) -> web.Response:
    """Removed upstream in 2024 (405, before auth), unless the `web_extend` knob models an
    account that still has it: then a create continuing a completed generation of the account."""
    state = request.app[STATE_KEY]
    if not state.config.web_extend:
        raise ApiError(405, "Method Not Allowed", {"Allow": "GET"})
    source = state.generation_for(request[ACCOUNT_KEY], request.match_info["generation_id"])
    if source is None or not source.video_ready_at(state.now()):
        raise ApiError(404, GENERATION_NOT_FOUND)
    return await _create(request, extend_of=source.id)


async def usage(request: web.Request) -> web.Response:
    return web.json_response(usage_json(request[ACCOUNT_KEY]))


async def me(request: web.Request) -> web.Response:
    return web.json_response(user_json(request[ACCOUNT_KEY]))


async def sign_upload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    query = parse_query(FileUploadQuery, request.query)
    upload = state.sign_upload(request[ACCOUNT_KEY], query.file_type, query.filename)
    return web.json_response(upload_json(upload, base_url(request), state.config.upload_url_ttl_seconds))


PHOTON = "/api/photon/v1"
# Routes FastAPI would answer at routing time, before the auth dependency runs.
UNAUTHENTICATED_ROUTES = frozenset({"extend"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{PHOTON}/generations/", create_generation)
    # Registered before `{generation_id}` so that a POST here is never taken for an id.
    r.add_post(f"{PHOTON}/generations/file_upload", sign_upload)
    r.add_get(f"{PHOTON}/generations/{{generation_id}}", get_generation, allow_head=False)
    r.add_get(
        f"{PHOTON}/generations/{{generation_id}}/download_video_url", download_video_url, allow_head=False
    )
    r.add_post(f"{PHOTON}/generations/{{generation_id}}/extend", extend_generation, name="extend")
    r.add_get(f"{PHOTON}/user/generations/", list_generations, allow_head=False)
    r.add_get(f"{PHOTON}/subscription/usage", usage, allow_head=False)
    r.add_get("/api/users/v1/me", me, allow_head=False)
