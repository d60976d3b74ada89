"""The official Dream Machine API (UPSTREAM.md §2) under /dream-machine/v1, with Bearer keys.

Same process and same generations clock as the web API: states `queued -> dreaming ->
completed | failed` (with `failure_reason`), `assets.video`, credits in cents that each create's
price comes off (Luma's list prices, shared/pricing.py), 429 beyond an account's concurrency or
creates per minute, and callbacks: each change of state is POSTed to the create's
`callback_url`, retried 3 times 100 ms apart when not answered 200, as Luma does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict

from shared.pricing import LIST_PRICES_CENTS, price_cents
from simulator.errors import ApiError, json_error
from simulator.keys import STATE_KEY
from simulator.models import Generation, OfficialAccount
from simulator.schemas import ASPECT_RATIOS, parse_body, parse_query
from simulator.state import OfficialRefused, SimulatorState
from simulator.views import iso_utc, media_url

logger = logging.getLogger("simulator")

PREFIX = "/dream-machine/v1"
OFFICIAL_ACCOUNT_KEY = web.RequestKey("official_account", OfficialAccount)
_STATES = {"pending": "queued", "processing": "dreaming", "completed": "completed", "failed": "failed"}
CALLBACK_ATTEMPTS = 3
CALLBACK_RETRY_SECONDS = 0.1
CALLBACK_TIMEOUT_SECONDS = 5.0
CALLBACK_TICK_SECONDS = 0.02
IMAGE_FETCH_TIMEOUT_SECONDS = 5.0


class Keyframe(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image", "generation"]
    url: str | None = None
    id: str | None = None


class OfficialCreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    model: Literal["ray-2", "ray-flash-2", "ray-1-6"] = "ray-1-6"
    aspect_ratio: str = "16:9"
    loop: bool = False
    resolution: str | None = None
    duration: str | None = None
    keyframes: dict[str, Keyframe] | None = None
    callback_url: str | None = None


class OfficialListQuery(BaseModel):
    offset: int = 0
    limit: int = 100


def generation_json(generation: Generation, t: float, base: str) -> dict[str, Any]:
    """An official API generation object at instant `t`."""
    state = _STATES[generation.state_at(t)]
    assets = None
    if generation.video_ready_at(t):
        assets = {
            "video": media_url(base, generation.id, "video.mp4"),
            "image": media_url(base, generation.id, "thumbnail.jpg"),
        }
    request: dict[str, Any] = {
        "generation_type": "video",
        "prompt": generation.prompt,
        "aspect_ratio": generation.aspect_ratio,
        "loop": generation.loop,
        "model": generation.model,
        "resolution": generation.resolution,
        "duration": generation.duration,
        "keyframes": generation.keyframes,
        "callback_url": generation.callback_url,
    }
    return {
        "id": generation.id,
        "generation_type": "video",
        "state": state,
        "failure_reason": generation.failure_reason if state == "failed" else None,
        "created_at": iso_utc(generation.created_at),
        "assets": assets,
        "model": generation.model,
        "request": request,
    }


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


def _base(request: web.Request) -> str:
    configured = _state(request).config.public_base_url
    return configured.rstrip("/") if configured else str(request.url.origin())


async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer key auth, as the official API answers it: 401 `{"detail": ...}` otherwise."""
    account = _state(request).authenticate_key(request.headers.get(hdrs.AUTHORIZATION))
    if account is None:
        return json_error(401, "Invalid API key is provided")
    request[OFFICIAL_ACCOUNT_KEY] = account
    response: web.StreamResponse = await handler(request)
    return response


async def _image_failure(session: aiohttp.ClientSession, keyframes: dict[str, Keyframe] | None) -> str | None:
    """Luma fetches keyframe images itself: what it says when one cannot be had."""
    for name, frame in (keyframes or {}).items():
        if frame.type != "image" or not frame.url:
            continue
        try:
            async with session.get(
                frame.url, timeout=aiohttp.ClientTimeout(total=IMAGE_FETCH_TIMEOUT_SECONDS)
            ) as answer:
                if answer.status == 200 and answer.content_type.startswith("image/"):
                    await answer.read()
                    continue
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return f"{name} image could not be downloaded"
    return None


async def create_generation(request: web.Request) -> web.Response:
    state = _state(request)
    account = request[OFFICIAL_ACCOUNT_KEY]
    body = parse_body(OfficialCreateBody, await request.read())
    if body.aspect_ratio not in ASPECT_RATIOS:
        raise ApiError(400, f"Invalid aspect ratio: {body.aspect_ratio}")
    if set(body.keyframes or {}) - {"frame0", "frame1"}:
        raise ApiError(400, "keyframes take frame0 and frame1 only")
    keyframes = {name: frame.model_dump(exclude_none=True) for name, frame in (body.keyframes or {}).items()}
    image_failure = None
    if state.config.official_fetch_images:
        image_failure = await _image_failure(request.app[SESSION_KEY], body.keyframes)
    try:
        generation = state.create_official(
            account,
            prompt=body.prompt,
            price_cents=price_cents(LIST_PRICES_CENTS, body.model, body.resolution, body.duration),
            aspect_ratio=body.aspect_ratio,
            loop=body.loop,
            model=body.model,
            resolution=body.resolution,
            duration=body.duration,
            keyframes=keyframes or None,
            callback_url=body.callback_url,
            image_failure=image_failure,
        )
    except OfficialRefused as refused:
        retry_after = state.config.official_retry_after_seconds
        headers = (
            {"Retry-After": f"{retry_after:g}"} if refused.status == 429 and retry_after is not None else None
        )
        raise ApiError(refused.status, refused.detail, headers) from None
    if state.config.hang_after_create_seconds > 0:
        # Already stored and charged: a client that times out here must not create it again.
        await asyncio.sleep(state.config.hang_after_create_seconds)
    return web.json_response(generation_json(generation, state.now(), _base(request)), status=201)


async def create_video(request: web.Request) -> web.Response:
    if not _state(request).config.official_video_route:
        raise ApiError(404, "Not Found")
    return await create_generation(request)


async def get_generation(request: web.Request) -> web.Response:
    state = _state(request)
    generation = state.official_generation_for(request[OFFICIAL_ACCOUNT_KEY], request.match_info["id"])
    if generation is None:
        raise ApiError(404, "Generation not found")
    return web.json_response(generation_json(generation, state.now(), _base(request)))


async def delete_generation(request: web.Request) -> web.Response:
    if not _state(request).delete_official(request[OFFICIAL_ACCOUNT_KEY], request.match_info["id"]):
        raise ApiError(404, "Generation not found")
    return web.Response(status=204)


async def list_generations(request: web.Request) -> web.Response:
    state = _state(request)
    account = request[OFFICIAL_ACCOUNT_KEY]
    query = parse_query(OfficialListQuery, request.query)
    newest_first = account.generations[::-1]
    page = newest_first[query.offset : query.offset + query.limit]
    t, base = state.now(), _base(request)
    return web.json_response(
        {
            "generations": [generation_json(g, t, base) for g in page],
            "count": len(page),
            "has_more": query.offset + len(page) < len(newest_first),
            "limit": query.limit,
            "offset": query.offset,
        }
    )


async def credits(request: web.Request) -> web.Response:
    return web.json_response({"credit_balance": float(request[OFFICIAL_ACCOUNT_KEY].credits_cents)})


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"message": "pong"})


SESSION_KEY = web.AppKey("official_session", aiohttp.ClientSession)


async def _deliver(
    session: aiohttp.ClientSession, state: SimulatorState, generation: Generation, reported: str
) -> None:
    """POST the generation object to its callback_url, up to 3 times until one answers 200."""
    assert generation.callback_url is not None
    body = generation_json(generation, state.now(), state.config.public_base_url or "")
    for attempt in range(1, CALLBACK_ATTEMPTS + 1):
        status: int | None = None
        try:
            async with session.post(
                generation.callback_url,
                json=body,
                timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS),
            ) as answer:
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = None
        state.callback_log.append(
            {
                "generation_id": generation.id,
                "state": _STATES[reported],
                "attempt": attempt,
                "status": status,
                "at": state.now(),
            }
        )
        if status == 200:
            return
        await asyncio.sleep(CALLBACK_RETRY_SECONDS)


async def _callbacks(app: web.Application) -> AsyncIterator[None]:
    """A client session for callbacks and image fetches, and the loop that sends the callbacks."""
    session = aiohttp.ClientSession()
    app[SESSION_KEY] = session
    state = app[STATE_KEY]
    sending: set[asyncio.Task[None]] = set()

    async def loop() -> None:
        while True:
            if state.config.official_callbacks:
                for generation, reported in state.callbacks_due():
                    state.callbacks_done.add((generation.id, reported))
                    task = asyncio.create_task(_deliver(session, state, generation, reported))
                    sending.add(task)
                    task.add_done_callback(sending.discard)
            await asyncio.sleep(CALLBACK_TICK_SECONDS)

    runner = asyncio.create_task(loop())
    yield
    runner.cancel()
    for task in [runner, *sending]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await session.close()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{PREFIX}/generations/video", create_video)
    r.add_post(f"{PREFIX}/generations", create_generation)
    r.add_get(f"{PREFIX}/generations", list_generations, allow_head=False)
    r.add_get(f"{PREFIX}/generations/{{id}}", get_generation, allow_head=False)
    r.add_delete(f"{PREFIX}/generations/{{id}}", delete_generation)
    r.add_get(f"{PREFIX}/credits", credits, allow_head=False)
    r.add_get(f"{PREFIX}/ping", ping, allow_head=False)
    app.cleanup_ctx.append(_callbacks)
