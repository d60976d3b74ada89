"""POST /api/generations/upload: a bounded, checked image handed to a worker's upload job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
from aiohttp import FormData
from arq.worker import Worker, func

from shared import keys
from shared.models import UploadResult
from shared.queue import UPLOAD_JOB, create_arq_pool, deserialize_job, serialize_job
from shared.settings import Settings
from tests.api.conftest import KEY_A, ApiClient, MakeApi, auth, redis_state
from tests.images import GIF, JPEG, PNG, WEBP

# arq's Worker.close still calls redis-py's deprecated close(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")

UploadJob = Callable[[dict[str, Any], str, str, str], Awaitable[dict[str, Any]]]
StartWorker = Callable[[UploadJob], Awaitable[None]]


def form(data: bytes, *, field: str = "file", filename: str = "photo.bin") -> FormData:
    body = FormData()
    body.add_field("note", "fields before the file are skipped")
    body.add_field(field, data, filename=filename, content_type="application/octet-stream")
    return body


@pytest_asyncio.fixture
async def start_worker(redis_url: str) -> AsyncIterator[StartWorker]:
    """An arq Worker in this event loop that runs `job` as the "upload" job.

    The real upload job belongs to worker/ and talks to the upstream; here a stand-in with the same
    name, arguments and result shape answers instead, so the api's side of the hand-off (bytes in
    Redis, the job on the shared queue, waiting for and reading its result) runs for real.
    """
    workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(job: UploadJob) -> None:
        worker = Worker(
            functions=[func(job, name=UPLOAD_JOB)],  # type: ignore[arg-type]
            redis_pool=create_arq_pool(Settings(_env_file=None, redis_url=redis_url)),
            queue_name=keys.ARQ_QUEUE,
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
            handle_signals=False,
            poll_delay=0.01,
            max_tries=1,
        )
        workers.append((worker, asyncio.create_task(worker.async_run())))

    yield start
    for worker, task in workers:
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def upload(api: ApiClient, body: FormData | bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    response = await api.post("/api/generations/upload", data=body, headers={**auth(KEY_A), **headers})
    answer: dict[str, Any] = await response.json()
    return response.status, answer


@pytest.mark.parametrize(
    ("image", "content_type", "filename"),
    [
        (JPEG, "image/jpeg", "photo.jpg"),
        (PNG, "image/png", "photo.png"),
        (GIF, "image/gif", "photo.gif"),
        (WEBP, "image/webp", "photo.webp"),
    ],
)
async def test_an_image_is_handed_to_the_upload_job_and_its_urls_returned(
    api: ApiClient,
    redis: redis_asyncio.Redis,
    start_worker: StartWorker,
    image: bytes,
    content_type: str,
    filename: str,
) -> None:
    """The job gets the bytes from Redis with the sniffed type; the caller gets the seed's upload shape."""
    seen: list[tuple[str, str, bytes | None]] = []

    async def upload_job(ctx: dict[str, Any], upload_id: str, kind: str, name: str) -> dict[str, Any]:
        seen.append((kind, name, await ctx["redis"].get(keys.upload_bytes(upload_id))))
        return UploadResult(
            id=f"luma-{upload_id}",
            presigned_url=f"https://storage.example.test/{upload_id}?sig=1",
            public_url=f"https://cdn.example.test/{upload_id}",
            account="acc-1",
        ).model_dump()

    await start_worker(upload_job)

    status, answer = await upload(api, form(image))

    assert status == 200, answer
    assert seen == [(content_type, filename, image)]
    data = answer["data"]
    assert set(data) == {"id", "presigned_url", "public_url"}
    upload_id = data["id"].removeprefix("luma-")
    assert data["public_url"] == f"https://cdn.example.test/{upload_id}"
    assert await redis.exists(keys.upload_bytes(upload_id)) == 0  # the bytes are not kept


@pytest.mark.parametrize(
    ("error_code", "status", "code"),
    [
        ("no_account_available", 503, "no_account_available"),
        ("upstream_error", 502, "upstream_error"),
        (None, 502, "upstream_error"),
    ],
)
async def test_a_failed_upload_job_is_reported_with_its_code(
    api: ApiClient, start_worker: StartWorker, error_code: str | None, status: int, code: str
) -> None:
    """An error the worker returns becomes 503 (no account) or 502 (the upstream failed)."""

    async def upload_job(ctx: dict[str, Any], upload_id: str, kind: str, name: str) -> dict[str, Any]:
        return UploadResult(error="it did not work", error_code=error_code).model_dump()

    await start_worker(upload_job)

    got_status, answer = await upload(api, form(PNG))

    assert (got_status, answer["code"]) == (status, code)
    assert answer["message"] == "it did not work"


async def test_an_upload_job_that_crashes_is_an_upstream_error(
    api: ApiClient, start_worker: StartWorker
) -> None:
    """A job that raises instead of answering is a 502, not a hang or an HTML 500."""

    async def upload_job(ctx: dict[str, Any], upload_id: str, kind: str, name: str) -> dict[str, Any]:
        raise RuntimeError("boom")

    await start_worker(upload_job)

    status, answer = await upload(api, form(PNG))

    assert (status, answer["code"]) == (502, "upstream_error")


async def test_an_upload_nobody_takes_times_out_and_leaves_nothing(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """With no worker the caller gets 504 upload_timeout, and neither bytes nor job stay behind."""
    api = await make_api(upload_timeout_seconds=0.3)
    before = await redis_state(redis)

    status, answer = await upload(api, form(PNG))

    assert (status, answer["code"]) == (504, "upload_timeout")
    assert await redis_state(redis) == before


async def test_an_upload_without_a_file_field_is_invalid(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    """A multipart body without `file` is 400 invalid_request and stores nothing."""
    before = await redis_state(redis)

    status, answer = await upload(api, form(PNG, field="image"))

    assert (status, answer["code"]) == (400, "invalid_request")
    assert "file" in answer["message"]
    assert await redis_state(redis) == before


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"file": "x"}', "application/json"),
        (b"", "application/octet-stream"),
        (b"not really multipart", "multipart/form-data; boundary=zzz"),
        (b"no boundary", "multipart/form-data"),
    ],
)
async def test_an_upload_that_is_not_multipart_is_invalid(
    api: ApiClient, redis: redis_asyncio.Redis, body: bytes, content_type: str
) -> None:
    """Anything but a well-formed multipart body is 400 invalid_request and stores nothing."""
    before = await redis_state(redis)

    status, answer = await upload(api, body, **{"Content-Type": content_type})

    assert (status, answer["code"]) == (400, "invalid_request")
    assert await redis_state(redis) == before


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7 not an image", b"", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"<svg></svg>"],
)
async def test_a_file_that_is_not_an_image_is_refused(
    api: ApiClient, redis: redis_asyncio.Redis, data: bytes
) -> None:
    """Magic bytes decide, not the name or the declared type: 415 not_an_image, nothing stored."""
    before = await redis_state(redis)

    status, answer = await upload(api, form(data, filename="looks-like.png"))

    assert (status, answer["code"]) == (415, "not_an_image")
    assert await redis_state(redis) == before


async def test_a_file_over_the_limit_is_too_large(make_api: MakeApi, redis: redis_asyncio.Redis) -> None:
    """A file past UPLOAD_MAX_BYTES is 413 too_large and stores nothing; one at the limit is read."""
    api = await make_api(upload_max_bytes=1000, upload_timeout_seconds=0.2)
    before = await redis_state(redis)

    status, answer = await upload(api, form(PNG + b"\x00" * (1001 - len(PNG))))

    assert (status, answer["code"]) == (413, "too_large")
    assert await redis_state(redis) == before
    # At exactly the limit the file passes the size check (and, with no worker, times out).
    status, answer = await upload(api, form(PNG + b"\x00" * (1000 - len(PNG))))
    assert (status, answer["code"]) == (504, "upload_timeout")
