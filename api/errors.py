"""The api's error family and the one middleware that renders every error as JSON.

Every failure a caller can see is `{"message": str, "code": str}` (plus detail where it helps) with
an HTTP status that matches: our own errors, aiohttp's (unknown route, wrong method, body too large),
Redis being unreachable, and anything unexpected (logged with its traceback, answered as a 500).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import redis.exceptions
import structlog
from aiohttp import http_exceptions, web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

log = structlog.get_logger("api")

# Requests that change nothing, so a Redis timeout during one leaves nothing half done.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a caller is told to wait while Redis is away: the api tries again on every request, so a
# short wait lets it see Redis back within a second or two of its return.
REDIS_RETRY_AFTER_SECONDS = 2


class ApiError(Exception):
    """An error with an HTTP status and a machine-readable code; `detail` joins the JSON body."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **detail: Any,
    ) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.detail = detail
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, **self.detail}


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"
    default_message = "invalid request"


class InvalidJson(InvalidRequest):
    code = "invalid_json"
    default_message = "the body must be a JSON object"


class CallbackNotAllowed(InvalidRequest):
    code = "callback_url_not_allowed"
    default_message = "callback_url must be a public http(s) URL"


class InvalidQuery(InvalidRequest):
    code = "invalid_query"
    default_message = "invalid query parameter"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"
    default_message = "a valid Secret-Key header is required"


class ForbiddenOrigin(ApiError):
    status = 403
    code = "origin_not_allowed"
    default_message = "browsers on this origin may not call the api (the operator sets CORS_ORIGINS)"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    default_message = "not found"


class UnknownAccountError(NotFound):
    code = "unknown_account"
    default_message = "no account by that name"


class AdminDisabled(NotFound):
    code = "admin_disabled"
    default_message = "the admin API is disabled: set ADMIN_KEY to enable it"


class AccountExistsError(ApiError):
    status = 409
    code = "account_exists"
    default_message = "an account by that name already exists"


class AccountBusyError(ApiError):
    status = 409
    code = "account_busy"
    default_message = "the account has generations in flight"


class NothingToRedeliver(ApiError):
    status = 409
    code = "nothing_to_redeliver"
    default_message = "no webhook of this generation has been queued yet"


class BadRequest(ApiError):
    """What aiohttp's HTTP parser refused: described by kind, never by what the caller sent."""

    status = 400
    code = "bad_request"
    default_message = "malformed HTTP request"


class BodyTimeout(ApiError, TimeoutError):
    """The body did not arrive in time.

    A TimeoutError too, so that aiohttp, draining what is left of the body after the answer,
    takes it for the end of that wait instead of an error of its own.
    """

    status = 408
    code = "body_timeout"
    default_message = "the request body did not arrive in time"


class HeaderTimeout(ApiError):
    status = 408
    code = "header_timeout"
    default_message = "the request headers did not arrive in time"


class TooLarge(ApiError):
    status = 413
    code = "too_large"
    default_message = "the request body is too large"


class ImageTooLarge(ApiError):
    status = 413
    code = "image_too_large"
    default_message = "the image has too many pixels"


class NotAnImage(ApiError):
    status = 415
    code = "not_an_image"
    default_message = "the file is not a JPEG, PNG, GIF or WebP image"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"
    default_message = "send the body as JSON, with the header Content-Type: application/json"


class QueueFullError(ApiError):
    status = 429
    code = "queue_full"
    default_message = "the queue is full; nothing was stored, try again later"


class HolderQueueFullError(QueueFullError):
    code = "holder_queue_full"
    default_message = "you have as many generations waiting as you may; nothing was stored"


class RateLimitedError(ApiError):
    status = 429
    code = "rate_limited"
    default_message = "too many creates this minute; nothing was stored"


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"
    default_message = "Idempotency-Key must be 1 to 255 printable ASCII characters"


class IdempotencyKeyReusedError(ApiError):
    status = 422
    code = "idempotency_key_reused"
    default_message = "this Idempotency-Key was used with another request; nothing was stored"


class AlreadySubmitted(ApiError):
    status = 409
    code = "already_submitted"
    default_message = "the generation was already sent to Luma and cannot be taken back"


class AlreadyFinished(ApiError):
    status = 409
    code = "already_finished"
    default_message = "the generation has already finished"


class UnknownHolder(NotFound):
    code = "unknown_holder"
    default_message = "no key holder by that id"


class UploadsBusy(ApiError):
    status = 429
    code = "uploads_busy"
    default_message = "too many uploads are waiting for a worker; nothing was kept, try again shortly"


class UpstreamError(ApiError):
    status = 502
    code = "upstream_error"
    default_message = "the upstream failed"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"
    default_message = "temporarily unavailable; try again shortly"


class RedisUnavailable(ServiceUnavailable):
    code = "redis_unavailable"
    default_message = "the queue's storage (Redis) is unavailable; nothing was changed, try again shortly"
    # A write that timed out was sent: a Redis that was only slow or frozen carries it out later.
    outcome_unknown = (
        "the queue's storage (Redis) did not answer in time, so this request may or may not have "
        "taken effect; try again shortly (a create retried with the same Idempotency-Key is made once)"
    )


class NoAccountAvailable(ServiceUnavailable):
    code = "no_account_available"
    default_message = "no Luma account can take work now; nothing was stored"


class ReplicationUnconfirmed(ServiceUnavailable):
    code = "replication_unconfirmed"
    default_message = "the write reached the primary Redis but not enough replicas in time"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"
    default_message = "this api process has as many connections as it takes; try again shortly"


class UploadTimeout(ApiError):
    status = 504
    code = "upload_timeout"
    default_message = "no worker finished the upload in time; nothing was kept, try again"


class InternalError(ApiError):
    pass


class ClientGone(ApiError):
    status = 400
    code = "connection_closed"
    default_message = "the connection closed before the request was complete"


def invalid_fields(exc: ValidationError) -> InvalidRequest:
    """A readable 400 naming every bad field; the caller's values are never echoed (cookies)."""
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "(body)",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    return InvalidRequest(f"invalid request: {summary}", errors=errors)


# aiohttp's own errors keep their status and get a code like ours.
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    code = _HTTP_CODES.get(exc.status) or re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_")
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        headers["Allow"] = exc.headers["Allow"]
    elif exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 413:
        message = f"the request body is too large: {exc.text}"
    else:
        message = exc.reason
    error = ApiError(message, code=code, headers=headers)
    error.status = exc.status
    return error


# What aiohttp's HTTP parser refused, said by kind (most specific first). The parser's own message
# quotes the bytes it choked on, which can be a Secret-Key or a cookie: it is never shown.
_PARSER_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "the request line has no valid method"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.LineTooLong, "the request line or a header is too long"),
    (http_exceptions.InvalidHeader, "a header is malformed"),
    (http_exceptions.InvalidURLError, "the request's URL is malformed"),
    (http_exceptions.TransferEncodingError, "the chunked body is malformed"),
    (http_exceptions.ContentLengthError, "the body does not match its Content-Length"),
    (http_exceptions.PayloadEncodingError, "the body's encoding is malformed"),
)


def parser_error(exc: BaseException | None) -> BadRequest:
    """The 400 for a request aiohttp's parser refused, in our shape and without its content."""
    for kind, message in _PARSER_ERRORS:
        if isinstance(exc, kind):
            return BadRequest(message)
    return BadRequest()


def protocol_error(status: int, exc: BaseException | None) -> ApiError:
    """What aiohttp's protocol answers itself (before any middleware), as one of our errors."""
    if status == 400:
        return parser_error(exc)
    if status == 504:
        error = ApiError("the request took too long", code="timeout")
        error.status = 504
        return error
    return InternalError("internal error")


def raw_response(error: ApiError) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for where aiohttp writes none."""
    body = json.dumps(error.body()).encode()
    reason = HTTPStatus(error.status).phrase
    head = [
        f"HTTP/1.1 {error.status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _redis_unavailable(exc: Exception) -> bool:
    """Redis down, timing out, read-only after a failover or out of memory: all worth a retry."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("OOM")


def render(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception a handler raises into a JSON error response."""
    try:
        return await handler(request)
    except ApiError as exc:
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return render(_from_http_exception(request, exc))
    except ConnectionResetError:
        # The caller hung up while its body was being read: nobody will see an answer, and a
        # traceback per hang-up would let any client write to the log at will.
        return render(ClientGone())
    except Exception as exc:
        if _redis_unavailable(exc):
            log.warning("redis unavailable", error=f"{type(exc).__name__}: {exc}")
            unsure = isinstance(exc, redis.exceptions.TimeoutError) and request.method not in SAFE_METHODS
            return render(
                RedisUnavailable(
                    RedisUnavailable.outcome_unknown if unsure else None,
                    headers={"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)},
                )
            )
        log.exception("unhandled error", method=request.method, path=request.path)
        return render(InternalError("internal error; the X-Request-ID header identifies it in our logs"))


class NotExtendable(ApiError):
    status = 409
    code = "not_extendable"
    default_message = "only a completed generation can be extended"
