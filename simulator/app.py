"""The simulator's aiohttp application and its entry point.

One middleware plays the layers in front of Luma's handlers, in the order a request meets them:
request log -> fault injection (load balancer, overload) -> FastAPI routing (307 slash redirects,
404, 405) -> cookie auth with session rotation -> handler, whose raised errors it renders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from simulator import cdn, control, faults, handlers, official
from simulator.config import SimulatorConfig
from simulator.errors import ApiError, json_error, render
from simulator.keys import ACCOUNT_KEY, STATE_KEY
from simulator.models import RequestRecord
from simulator.schemas import RequestInvalid
from simulator.state import SimulatorError, SimulatorState

logger = logging.getLogger("simulator")

# Uploads are whole images in one PUT; aiohttp's 1 MiB default would reject ordinary photos.
MAX_BODY_BYTES = 64 * 1024 * 1024
SESSION_COOKIE_ATTRIBUTES = "Path=/; HttpOnly; Secure; SameSite=Lax"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _call(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (ApiError, RequestInvalid, SimulatorError) as exc:
        return render(exc)


async def _routing_error(request: web.Request, error: web.HTTPException) -> web.StreamResponse:
    """Answer an unrouted request as Starlette does: slash redirect, then 404 / 405 in JSON."""
    if isinstance(error, web.HTTPNotFound) and request.path != "/":
        other = request.path[:-1] if request.path.endswith("/") else request.path + "/"
        match = await request.app.router.resolve(request.clone(rel_url=request.rel_url.with_path(other)))
        if match.http_exception is None or isinstance(match.http_exception, web.HTTPMethodNotAllowed):
            location = request.url.with_path(other).with_query(request.rel_url.query)
            return web.Response(status=307, headers={hdrs.LOCATION: str(location)})
    headers = {"Allow": error.headers[hdrs.ALLOW]} if hdrs.ALLOW in error.headers else None
    detail = "Method Not Allowed" if error.status == 405 else "Not Found"
    return json_error(error.status, detail, headers)


async def _answer_luma(request: web.Request, handler: Handler, state: SimulatorState) -> web.StreamResponse:
    error = request.match_info.http_exception
    if error is not None:
        return await _routing_error(request, error)
    route_name = request.match_info.route.name
    if route_name in handlers.UNAUTHENTICATED_ROUTES and not state.config.web_extend:
        return await _call(request, handler)
    cookie = request.headers.get(hdrs.COOKIE)
    account = state.authenticate(cookie)
    if account is None:
        state.count_unauthenticated(cookie)
        return json_error(401, "Not authenticated")
    request[ACCOUNT_KEY] = account
    response = await _call(request, handler)
    # Every authenticated answer rotates the session, as Luma does; earlier values stay valid.
    response.headers.add(
        hdrs.SET_COOKIE, f"luma_session={state.rotate_session(account)}; {SESSION_COOKIE_ATTRIBUTES}"
    )
    return response


async def _answer_official(request: web.Request, handler: Handler) -> web.StreamResponse:
    error = request.match_info.http_exception
    if error is not None:
        return await _routing_error(request, error)
    return await official.authenticate(request, lambda req: _call(req, handler))


@web.middleware
async def upstream_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_sim/"):
        return await _call(request, handler)
    state = request.app[STATE_KEY]
    started, started_at = time.monotonic(), state.now()
    fault_label: str | None = None
    status = 500  # what aiohttp answers if a bug raises below
    try:
        if request.path.startswith(("/api/", official.PREFIX + "/")):
            fault = await faults.inject(request, state)
            fault_label = fault.label
            if fault.response is not None:
                status = fault.response.status
                return fault.response
            if request.path.startswith("/api/"):
                response = await _answer_luma(request, handler, state)
            else:
                response = await _answer_official(request, handler)
        elif request.match_info.http_exception is not None:
            response = await _routing_error(request, request.match_info.http_exception)
        else:
            response = await _call(request, handler)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's convention)
        raise
    finally:
        headers = request.headers
        account = state.identify(headers.get(hdrs.COOKIE)) or state.authenticate_key(
            headers.get(hdrs.AUTHORIZATION)
        )
        state.log_request(
            RequestRecord(
                time=started_at,
                method=request.method,
                path=request.path,
                query=request.query_string,
                account=account.name if account is not None else None,
                status=status,
                duration=time.monotonic() - started,
                fault=fault_label,
                cookie=headers.get(hdrs.COOKIE),
                origin=headers.get(hdrs.ORIGIN),
                referer=headers.get(hdrs.REFERER),
                user_agent=headers.get(hdrs.USER_AGENT),
            )
        )
        logger.debug("%s %s -> %s (%s)", request.method, request.path, status, fault_label or "no fault")


def create_app(state: SimulatorState) -> web.Application:
    app = web.Application(middlewares=[upstream_middleware], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    handlers.add_routes(app)
    official.add_routes(app)
    cdn.add_routes(app)
    control.add_routes(app)
    return app


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the simulator until interrupted (what `luma-queue simulator` calls)."""
    state = SimulatorState(config)
    logger.info(
        "Luma simulator on http://%s:%d, accounts: %s",
        host,
        port,
        ", ".join([*state.accounts, *state.official_accounts]) or "none",
    )
    # access_log=None and print=None: one quiet line above; per-request lines are debug logs.
    web.run_app(create_app(state), host=host, port=port, print=None, access_log=None)
