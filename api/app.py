"""The api process: create_app(settings) wires resources, routes and middlewares; run() serves it."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable

import structlog
from aiohttp import web

from api import (
    dashboard,
    docs,
    extend,
    handlers,
    metrics,
    processes,
    relay,
    server,
    upstream_callbacks,
    webhooks,
)
from api.appkeys import ARQ, EVENT_HUB, EVENTS, FILES, REDIS, REGISTRY, SETTINGS, STORE, WEBHOOKS
from api.auth import KEYRING, KeyRing
from api.errors import error_middleware
from api.events import EventHub
from api.images import image_decoder
from api.middleware import add_response_headers, body_deadline, preflight, request_context
from shared.accounts import AccountRegistry
from shared.events import EventLog
from shared.files import file_store
from shared.logs import configure_logging
from shared.queue import create_arq_pool
from shared.redisconn import redacted_url, redis_client
from shared.settings import Settings
from shared.store import generation_store
from shared.webhooks import webhook_store

# Multipart framing around an upload, so aiohttp's own limit never fires before ours (which
# streams and stops early); it still bounds JSON bodies.
CLIENT_MAX_SIZE_MARGIN = 64 * 1024

log = structlog.get_logger("api")


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """Decoded-string client for the store and the account registry."""
    settings = app[SETTINGS]
    client = redis_client(settings)
    app[REDIS] = client
    app[STORE] = generation_store(client, settings, keep_finished=True)
    app[REGISTRY] = AccountRegistry(client)
    app[EVENTS] = EventLog(client)
    app[WEBHOOKS] = webhook_store(client, settings)
    yield
    await client.aclose()


async def _event_hub(app: web.Application) -> AsyncIterator[None]:
    """One tail of the event log for every live stream this process serves."""
    hub = EventHub(app[STORE])
    app[EVENT_HUB] = hub
    await hub.start()
    yield
    await hub.stop()


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: a live stream never ends by itself, and shutdown would wait out its grace for it."""
    app[EVENT_HUB].end_streams()


async def _arq(app: web.Application) -> AsyncIterator[None]:
    """arq's pool (bytes replies): upload jobs and the uploaded bytes."""
    pool = create_arq_pool(app[SETTINGS])
    app[ARQ] = pool
    yield
    await pool.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, preflight, body_deadline, error_middleware],
        client_max_size=settings.upload_max_bytes + CLIENT_MAX_SIZE_MARGIN,
    )
    app[SETTINGS] = settings
    app[KEYRING] = KeyRing(settings.secret_key, settings.admin_key)
    app[FILES] = file_store(settings)
    app.cleanup_ctx.extend([_redis, _event_hub, _arq, image_decoder])
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(add_response_headers)
    app.router.add_get("/api/generations", handlers.list_generations)
    # Before /{id}, which would otherwise take "usage" or "events" for an id.
    app.router.add_get("/api/generations/usage", handlers.get_usage)
    app.router.add_get("/api/generations/events", handlers.generation_stream)
    app.router.add_post("/api/generations/create", handlers.create_generation)
    app.router.add_post("/api/generations/batch", handlers.create_batch)
    app.router.add_post("/api/generations/upload", handlers.upload_image)
    app.router.add_get("/api/generations/{id}", handlers.get_generation)
    app.router.add_get("/api/generations/{id}/events", handlers.generation_events)
    app.router.add_post("/api/generations/{id}/cancel", handlers.cancel_generation)
    app.router.add_get("/api/generations/{id}/deliveries", webhooks.list_deliveries)
    app.router.add_get("/api/webhooks/secret", webhooks.get_secret)
    app.router.add_post("/api/webhooks/secret/rotate", webhooks.rotate_secret)
    app.router.add_post("/api/admin/generations/{id}/redeliver", webhooks.redeliver)
    app.router.add_get("/api/admin/accounts", handlers.list_accounts)
    app.router.add_post("/api/admin/accounts", handlers.add_account)
    app.router.add_patch("/api/admin/accounts/{name}", handlers.update_account)
    app.router.add_delete("/api/admin/accounts/{name}", handlers.remove_account)
    app.router.add_get("/api/admin/events", handlers.recent_events)
    app.router.add_get("/api/admin/holders", handlers.list_holders)
    app.router.add_patch("/api/admin/holders/{owner}", handlers.update_holder)
    app.router.add_get("/healthz", handlers.health)
    app.router.add_get("/readyz", handlers.ready)
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/dashboard/{name}", dashboard.asset)
    extend.add_routes(app)
    upstream_callbacks.add_routes(app)
    relay.add_routes(app)
    metrics.add_routes(app)
    docs.add_routes(app)
    return app


def loopback(host: str) -> bool:
    """Whether API_HOST only takes connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def refuse_if_open_on_a_network(settings: Settings) -> None:
    """An api without SECRET_KEY spends the pool's credits for anyone who reaches it: on anything
    but loopback that must be said out loud (ALLOW_OPEN_API=true), never a default."""
    if settings.secret_key or settings.allow_open_api or loopback(settings.api_host):
        return
    raise SystemExit(
        f"luma-queue: refusing to serve without SECRET_KEY on {settings.api_host} (reachable from other "
        "machines, spending your accounts' credits for anyone); set SECRET_KEY, or ALLOW_OPEN_API=true "
        "if that is really meant"
    )


def warn_if_open(settings: Settings) -> None:
    """Say once, in the log (stderr), that an api without SECRET_KEY serves anyone."""
    if settings.secret_key:
        return
    log.warning(
        "SECRET_KEY is empty: the api is open to anyone who can reach it; set SECRET_KEY to require a key",
        host=settings.api_host,
        port=settings.api_port,
    )


def run(settings: Settings) -> int:
    """Serve from API_PROCESSES processes until SIGINT/SIGTERM; the exit code.

    Requests in flight then get SHUTDOWN_GRACE_SECONDS to finish.
    """
    refuse_if_open_on_a_network(settings)
    try:
        server.check_can_listen(settings.api_host, settings.api_port)
    except server.CannotListen as exc:
        raise SystemExit(f"luma-queue: {exc}") from None
    configure_logging(settings.log_level, settings.log_json)
    warn_if_open(settings)
    if settings.api_processes > 1:
        return processes.run_processes(settings)
    try:
        serve_here(settings)
    except server.CannotListen as exc:  # taken between the check and the bind
        raise SystemExit(f"luma-queue: {exc}") from None
    return 0


def serve_here(
    settings: Settings,
    *,
    reuse_port: bool = False,
    stop_signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    parent_pid: int | None = None,
) -> None:
    """Serve from this process, on the event loop API_EVENT_LOOP picks, until a stop signal."""
    loop_name, loop_factory = event_loop(settings.api_event_loop)
    log.info(
        "api starting",
        host=settings.api_host,
        port=settings.api_port,
        redis=redacted_url(settings.redis_url),
        sentinels=",".join(f"{host}:{port}" for host, port in settings.redis_sentinels) or None,
        loop=loop_name,
        pid=os.getpid(),
    )
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            server.serve(
                create_app(settings),
                settings,
                reuse_port=reuse_port,
                stop_signals=stop_signals,
                parent_pid=parent_pid,
            )
        )


def event_loop(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(name, loop factory) for API_EVENT_LOOP: uvloop if asked or, for "auto", if installed."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit(
                    "API_EVENT_LOOP=uvloop, but uvloop is not installed: pip install 'luma-queue[uvloop]'"
                ) from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None
