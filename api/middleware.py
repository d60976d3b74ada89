"""What every request and response gets: a request id, one log line (and its HTTP metrics), a
deadline for its body, and the CORS headers for the browser origins CORS_ORIGINS allows (none unless set)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler

from api.appkeys import SETTINGS
from api.errors import BodyTimeout, ForbiddenOrigin, render
from api.metrics import observe_request

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# A caller's id is reused only if it is short and plain: it ends up in headers and log lines.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# nginx's code for "the client went away before the answer"
CLIENT_CLOSED = 499

ANY_ORIGIN = "*"
# On every answer to an allowed origin.
CORS_HEADERS = {"Access-Control-Expose-Headers": "X-Request-ID, Retry-After"}
# On the answer to an allowed origin's preflight.
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Secret-Key, X-Request-ID",
    "Access-Control-Max-Age": "600",
}

log = structlog.get_logger("api")


# The one path that carries a credential: a Luma callback's token (api/upstream_callbacks.py).
_CALLBACK_PATH = "/api/upstream/callback/"


def _loggable(path: str) -> str:
    return _CALLBACK_PATH + "***" if path.startswith(_CALLBACK_PATH) else path


def _request_id(offered: str | None) -> str:
    if offered is not None and _REQUEST_ID_PATTERN.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind `request_id` to every log line of this request and log one line when it ends.

    Headers (the Secret-Key among them) and the query string are never logged.
    """
    request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects only: api/errors.py renders every error
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            seconds = time.perf_counter() - started
            observe_request(request, status, seconds)
            log.info(
                "request",
                method=request.method,
                path=_loggable(request.path),
                status=status,
                ms=round(seconds * 1000, 1),
            )


def allowed_origin(request: web.Request) -> str | None:
    """The Access-Control-Allow-Origin for this request, or None: its Origin is not allowed."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = request.app[SETTINGS].cors_origins
    if ANY_ORIGIN in allowed:
        return ANY_ORIGIN
    return origin if origin.lower() in allowed else None


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the request id on every response, errors included, and CORS headers
    when the request comes from an allowed origin."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    if request.app[SETTINGS].cors_origins:
        origin = allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.update(CORS_HEADERS)
        if ANY_ORIGIN not in request.app[SETTINGS].cors_origins:
            response.headers.add("Vary", "Origin")  # the answer depends on who asks: caches must know


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a CORS preflight on any /api path, before routing and without a key: 204 for an
    allowed origin, 403 `origin_not_allowed` for any other.

    A middleware rather than an OPTIONS route on /api/{tail}: such a route would turn every
    unknown /api path into a 405 (the path "exists" for OPTIONS) instead of a 404.
    """
    if request.method == "OPTIONS" and (request.path == "/api" or request.path.startswith("/api/")):
        if allowed_origin(request) is None:
            return render(ForbiddenOrigin())
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)
    return await handler(request)


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body must be in within API_BODY_TIMEOUT_SECONDS of its headers, or reading it fails with
    408 `body_timeout`: a client trickling its body cannot hold a connection (and a slot) for long."""
    body = request.content
    if not request.body_exists or body.is_eof():
        return await handler(request)
    timeout = request.app[SETTINGS].api_body_timeout_seconds
    timer = asyncio.get_running_loop().call_later(timeout, _expire, body, timeout)
    body.on_eof(timer.cancel)
    try:
        return await handler(request)
    finally:
        timer.cancel()


def _expire(body: StreamReader, timeout: float) -> None:
    if not body.is_eof():
        body.set_exception(BodyTimeout(f"the request body did not arrive within {timeout:g} s"))
