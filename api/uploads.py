"""Uploads: read one image from a multipart body (bounded, decoded) and hand it to a worker.

Only workers talk to the upstream, so the api parks the bytes in Redis, enqueues the upload job
and waits for its answer: the caller gets a `public_url` only once the bytes are really there.

The bytes parked in Redis at once, across every api, are capped (UPLOAD_MAX_INFLIGHT_BYTES): one
Lua step checks the sum and stores the bytes, or answers 429 `uploads_busy` storing nothing. Each
reservation lapses with its bytes' expiry, so an api that dies mid-upload gives its share back.
(The other way, streaming the bytes from the api to the account's presigned URL, would have the api
call the upstream, which only workers do.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import redis.exceptions
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.multipart import BodyPartReader, MultipartReader
from aiohttp.web_protocol import RequestPayloadError
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import ResultNotFound, SerializationError
from pydantic import ValidationError

from api.appkeys import ARQ, SETTINGS
from api.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    ServiceUnavailable,
    TooLarge,
    UploadsBusy,
    UploadTimeout,
    UpstreamError,
)
from api.images import DECODER, inspect_image
from shared import keys
from shared.models import UploadResult, new_id
from shared.queue import UPLOAD_JOB

FIELD = "file"
CHUNK_BYTES = 64 * 1024
# Multipart framing around the file: a body longer than the file limit plus this is refused unread.
MULTIPART_MARGIN_BYTES = 64 * 1024
# A worker's job answers in well under this; polling faster only loads Redis.
RESULT_POLL_SECONDS = 0.05
# An upload usually takes seconds: retrying sooner than this mostly finds the same uploads busy.
UPLOADS_BUSY_RETRY_SECONDS = 5

# The Lua below shares its KEYS: expiry zset, sizes hash, bytes total, the upload's bytes key.
# give_back(id): an upload's reservation returned (once, however often it is called).
_GIVE_BACK = """
local function give_back(id)
  local size = redis.call('HGET', KEYS[2], id)
  if size and redis.call('DECRBY', KEYS[3], size) <= 0 then
    redis.call('DEL', KEYS[3])  -- nothing in flight leaves no key behind
  end
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  return size
end
"""
# Frees what lapsed reservations hold, then parks the bytes if they fit under the cap.
# ARGV: upload id, size, cap, ttl seconds, the bytes
# -> {1, total held} stored, or {0, total held, ms until the first reservation lapses}
_PARK = (
    _GIVE_BACK
    + """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  give_back(id)
end
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
local size = tonumber(ARGV[2])
if held + size > tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = first[2] and (tonumber(first[2]) - now) or 0
  return {0, held, wait}
end
redis.call('INCRBY', KEYS[3], size)
redis.call('HSET', KEYS[2], ARGV[1], size)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]) * 1000, ARGV[1])
redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[4])
return {1, held + size}
"""
)
# Deletes the upload's bytes and gives back its reservation. ARGV: upload id
_RELEASE = (
    _GIVE_BACK
    + """
redis.call('DEL', KEYS[4])
return give_back(ARGV[1])
"""
)

log = structlog.get_logger("api")


@dataclass(frozen=True)
class Image:
    data: bytes
    content_type: str
    filename: str


def safe_filename(name: str | None, extension: str) -> str:
    """The caller's file name reduced to a harmless stem, with the extension of what it really is."""
    stem = PurePosixPath((name or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:80] or "file"
    return f"{stem}.{extension}"


async def read_image(request: web.Request, max_bytes: int) -> Image:
    """The multipart `file` field, read in chunks and refused as soon as it passes `max_bytes`,
    then decoded whole (UPLOAD_MAX_PIXELS bounds its size) before it is taken."""
    declared = request.content_length
    if declared is not None and declared > max_bytes + MULTIPART_MARGIN_BYTES:
        raise TooLarge(f"the request body is {declared} bytes; the file limit is {max_bytes}")
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest(f"send the image as multipart/form-data with a `{FIELD}` field")
    try:
        part = await _file_part(await request.multipart())
        data = await _read_bounded(part, max_bytes)
    except RequestPayloadError:  # bad chunking, or fewer bytes than Content-Length said
        raise InvalidRequest("the request body is malformed (chunked encoding or Content-Length)") from None
    except (ValueError, BadHttpMessage) as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    max_pixels = request.app[SETTINGS].upload_max_pixels
    kind = await asyncio.get_running_loop().run_in_executor(
        request.app[DECODER], inspect_image, data, max_pixels
    )
    return Image(
        data=data, content_type=kind.content_type, filename=safe_filename(part.filename, kind.extension)
    )


async def _file_part(reader: MultipartReader) -> BodyPartReader:
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == FIELD:
            return part
    raise InvalidRequest(f"the multipart body has no `{FIELD}` field")


async def _read_bounded(part: BodyPartReader, max_bytes: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        data.extend(chunk)
        if len(data) > max_bytes:
            raise TooLarge(f"the file is larger than the limit of {max_bytes} bytes")
    return bytes(data)


async def hand_to_worker(app: web.Application, image: Image) -> UploadResult:
    """Park the bytes (if they fit under UPLOAD_MAX_INFLIGHT_BYTES), enqueue the upload job and
    wait for its answer, at most UPLOAD_TIMEOUT_SECONDS (an error raises)."""
    arq, settings = app[ARQ], app[SETTINGS]
    wait_seconds, max_inflight_bytes = settings.upload_timeout_seconds, settings.upload_max_inflight_bytes
    upload_id = new_id()
    job_id = keys.upload_job_id(upload_id)
    answered = False
    await _park(arq, upload_id, image.data, wait_seconds=wait_seconds, max_inflight_bytes=max_inflight_bytes)
    try:
        job = await arq.enqueue_job(UPLOAD_JOB, upload_id, image.content_type, image.filename, _job_id=job_id)
        if job is None:  # only if a fresh uuid collided with a job id
            raise InternalError("could not enqueue the upload")
        try:
            answer = await job.result(timeout=wait_seconds, poll_delay=RESULT_POLL_SECONDS)
        except TimeoutError:
            raise UploadTimeout from None
        except (ResultNotFound, SerializationError) as exc:
            log.error("upload job failed", upload_id=upload_id, error=f"{type(exc).__name__}: {exc}")
            raise UpstreamError("the upload job failed") from None
        answered = True
    finally:
        # Answered, timed out, or the request was cancelled (shutdown): either way nobody needs
        # the bytes any more, and an unanswered job is taken back so that a late worker does not
        # upload for nobody (one that already started finds its bytes gone, or finishes unseen).
        with contextlib.suppress(redis.exceptions.RedisError):
            await _clean_up(arq, upload_id, job_id, take_back_job=not answered)
    return _checked(upload_id, answer)


def _upload_keys(upload_id: str) -> list[str]:
    return [keys.UPLOADS_EXPIRY, keys.UPLOADS_SIZES, keys.UPLOADS_BYTES, keys.upload_bytes(upload_id)]


async def _park(
    arq: ArqRedis, upload_id: str, data: bytes, *, wait_seconds: float, max_inflight_bytes: int
) -> None:
    ttl_seconds = math.ceil(wait_seconds) + keys.UPLOAD_BYTES_GRACE_SECONDS
    stored = await arq.register_script(_PARK)(
        keys=_upload_keys(upload_id), args=[upload_id, len(data), max_inflight_bytes, ttl_seconds, data]
    )
    if stored[0] == 1:
        return
    lapses_in = math.ceil(int(stored[2]) / 1000)
    retry_after = max(1, min(UPLOADS_BUSY_RETRY_SECONDS, lapses_in))
    log.warning(
        "uploads busy", held_bytes=int(stored[1]), size=len(data), max_inflight_bytes=max_inflight_bytes
    )
    raise UploadsBusy(
        f"uploads waiting for a worker already hold {int(stored[1])} of {max_inflight_bytes} bytes; "
        f"nothing was kept, retry in {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )


async def _clean_up(arq: ArqRedis, upload_id: str, job_id: str, *, take_back_job: bool) -> None:
    async with arq.pipeline(transaction=True) as pipe:
        await arq.register_script(_RELEASE)(keys=_upload_keys(upload_id), args=[upload_id], client=pipe)
        if take_back_job:
            pipe.zrem(keys.ARQ_QUEUE, job_id)
            pipe.delete(job_key_prefix + job_id)
        await pipe.execute()


def _checked(upload_id: str, answer: object) -> UploadResult:
    try:
        result = UploadResult.model_validate(answer)
    except ValidationError:
        log.error("upload job answered an unexpected shape", upload_id=upload_id)
        raise UpstreamError("the upload worker gave an unexpected answer") from None
    if result.error:
        code = result.error_code or UpstreamError.code
        error: ApiError = (
            UpstreamError(result.error)
            if code == UpstreamError.code
            else ServiceUnavailable(result.error, code=code)
        )
        raise error
    if not (result.id and result.presigned_url and result.public_url):
        log.error("upload job answered without a url", upload_id=upload_id)
        raise UpstreamError("the upload worker gave an answer without a public_url")
    return result
