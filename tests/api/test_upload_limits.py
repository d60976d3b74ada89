"""Uploads cannot fill Redis: the bytes waiting for a worker are capped across every api, a lapsed
reservation gives its share back, and only images that decode whole (and not too large) get in."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as redis_asyncio
from aiohttp import FormData

from shared import keys
from tests.api.conftest import KEY_A, ApiClient, MakeApi, auth, redis_state
from tests.images import PNG, image_bytes

DEADLINE_SECONDS = 15.0


def form(data: bytes) -> FormData:
    body = FormData()
    body.add_field("file", data, filename="a.png", content_type="image/png")
    return body


async def upload(api: ApiClient, data: bytes = PNG) -> tuple[int, dict[str, object], dict[str, str]]:
    response = await api.post("/api/generations/upload", data=form(data), headers=auth(KEY_A))
    return response.status, await response.json(), dict(response.headers)


async def parked(redis: redis_asyncio.Redis) -> list[bytes]:
    return [key for key in await redis.keys(keys.upload_bytes("*"))]


async def wait_for_parked(redis: redis_asyncio.Redis, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(await parked(redis)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} uploads reached Redis"
        await asyncio.sleep(0.01)


async def test_uploads_past_the_in_flight_cap_are_429_uploads_busy_and_store_nothing(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """With two images' worth of room and two uploads waiting for a worker, a third is 429
    uploads_busy with Retry-After; Redis holds the two, never more than the cap."""
    api = await make_api(
        upload_max_bytes=len(PNG), upload_max_inflight_bytes=2 * len(PNG), upload_timeout_seconds=2
    )
    waiting = [asyncio.create_task(upload(api)) for _ in range(2)]
    await wait_for_parked(redis, 2)

    status, answer, headers = await upload(api)

    assert (status, answer["code"]) == (429, "uploads_busy")
    assert 1 <= int(headers["Retry-After"]) <= 5
    assert len(await parked(redis)) == 2
    assert int(await redis.get(keys.UPLOADS_BYTES) or 0) == 2 * len(PNG)
    assert [(await task)[0] for task in waiting] == [504, 504]  # no worker: each gives its room back
    assert await redis_state(redis) == {}


async def test_room_given_back_takes_the_next_upload(make_api: MakeApi, redis: redis_asyncio.Redis) -> None:
    """Once an upload is answered its bytes and its reservation are gone, and the next one fits."""
    api = await make_api(
        upload_max_bytes=len(PNG), upload_max_inflight_bytes=len(PNG), upload_timeout_seconds=0.2
    )

    assert (await upload(api))[0] == 504
    assert (await upload(api))[0] == 504  # not 429: the first gave its room back


async def test_a_lapsed_reservation_is_freed_for_the_next_upload(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """An api that died with an upload in flight left its reservation; once it lapses, it is freed."""
    api = await make_api(
        upload_max_bytes=len(PNG), upload_max_inflight_bytes=len(PNG), upload_timeout_seconds=0.2
    )
    await redis.zadd(keys.UPLOADS_EXPIRY, {"from-a-dead-api": 1})  # lapsed in 1970
    await redis.hset(keys.UPLOADS_SIZES, "from-a-dead-api", len(PNG))
    await redis.set(keys.UPLOADS_BYTES, len(PNG))

    status, answer, _ = await upload(api)

    assert (status, answer["code"]) == (504, "upload_timeout")  # taken (no worker), not uploads_busy
    assert await redis_state(redis) == {}


async def test_an_image_with_too_many_pixels_is_413_and_stores_nothing(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """Past UPLOAD_MAX_PIXELS, a perfectly valid image is refused before any pixel is decoded."""
    api = await make_api(upload_max_pixels=100)

    status, answer, _ = await upload(api, image_bytes("PNG", (20, 20)))

    assert (status, answer["code"]) == (413, "image_too_large")
    assert "20x20" in str(answer["message"])
    assert await redis_state(redis) == {}


async def test_a_valid_header_followed_by_something_else_is_415(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """Magic bytes are not enough: a JPEG, PNG, GIF or WebP header with anything else after it is 415."""
    for kind in ("JPEG", "PNG", "GIF", "WEBP"):
        real = image_bytes(kind, (40, 30))
        for impostor in (real[:40] + b"<html><body>not pixels</body></html>" * 8, real[: len(real) // 2]):
            status, answer, _ = await upload(api, impostor)
            assert (status, answer["code"]) == (415, "not_an_image"), kind
    assert await redis_state(redis) == {}


async def test_an_upload_declared_larger_than_the_limit_is_refused_unread(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """A Content-Length far past UPLOAD_MAX_BYTES is 413 at once, from the header."""
    api = await make_api(upload_max_bytes=1000)

    response = await api.post(
        "/api/generations/upload",
        data=b"x" * 200_000,
        headers={**auth(KEY_A), "Content-Type": "multipart/form-data; boundary=b"},
    )

    assert response.status == 413
    assert (await response.json())["code"] == "too_large"
    assert await redis_state(redis) == {}
