"""Uploads: read one image from a multipart body (bounded, checked) and hand it to a worker.

Only workers talk to the upstream, so the api parks the bytes in Redis, enqueues the upload job
and waits for its answer: the caller gets a `public_url` only once the bytes are really there.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import redis.exceptions
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.multipart import BodyPartReader, MultipartReader
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import ResultNotFound, SerializationError
from pydantic import ValidationError

from api.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    NotAnImage,
    ServiceUnavailable,
    TooLarge,
    UploadTimeout,
    UpstreamError,
)
from shared import keys
from shared.models import UploadResult, new_id
from shared.queue import UPLOAD_JOB

FIELD = "file"
CHUNK_BYTES = 64 * 1024
# A worker's job answers in well under this; polling faster only loads Redis.
RESULT_POLL_SECONDS = 0.05

log = structlog.get_logger("api")


@dataclass(frozen=True)
class Image:
    data: bytes
    content_type: str
    filename: str


def sniff(data: bytes) -> tuple[str, str] | None:
    """(content type, extension) from the file's first bytes, or None if it is no image we take."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif", "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


def safe_filename(name: str | None, extension: str) -> str:
    """The caller's file name reduced to a harmless stem, with the extension of what it really is."""
    stem = PurePosixPath((name or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:80] or "file"
    return f"{stem}.{extension}"


async def read_image(request: web.Request, max_bytes: int) -> Image:
    """The multipart `file` field, read in chunks and refused as soon as it passes `max_bytes`."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest(f"send the image as multipart/form-data with a `{FIELD}` field")
    try:
        part = await _file_part(await request.multipart())
        data = await _read_bounded(part, max_bytes)
    except (ValueError, BadHttpMessage) as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    kind = sniff(data)
    if kind is None:
        raise NotAnImage
    content_type, extension = kind
    return Image(data=data, content_type=content_type, filename=safe_filename(part.filename, extension))


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


async def hand_to_worker(arq: ArqRedis, image: Image, *, wait_seconds: float) -> UploadResult:
    """Park the bytes, enqueue the upload job and wait for its answer (an error raises)."""
    upload_id = new_id()
    job_id = keys.upload_job_id(upload_id)
    answered = False
    await arq.set(keys.upload_bytes(upload_id), image.data, ex=keys.UPLOAD_BYTES_TTL_SECONDS)
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


async def _clean_up(arq: ArqRedis, upload_id: str, job_id: str, *, take_back_job: bool) -> None:
    async with arq.pipeline(transaction=True) as pipe:
        pipe.delete(keys.upload_bytes(upload_id))
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
