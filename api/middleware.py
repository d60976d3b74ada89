"""What every request and response gets: a request id, one log line, and the CORS headers."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# A caller's id is reused only if it is short and plain: it ends up in headers and log lines.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# nginx's code for "the client went away before the answer"
CLIENT_CLOSED = 499

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Secret-Key, X-Request-ID",
    "Access-Control-Expose-Headers": "X-Request-ID, Retry-After",
}
PREFLIGHT_MAX_AGE_SECONDS = 600

log = structlog.get_logger("api")


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
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS and the request id on every response, errors included."""
    response.headers.update(CORS_HEADERS)
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a CORS preflight on any /api path with 204, before routing and without a key.

    A middleware rather than an OPTIONS route on /api/{tail}: such a route would turn every
    unknown /api path into a 405 (the path "exists" for OPTIONS) instead of a 404.
    """
    if request.method == "OPTIONS" and (request.path == "/api" or request.path.startswith("/api/")):
        return web.Response(status=204, headers={"Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS)})
    return await handler(request)
