"""The api process: create_app(settings) wires resources, routes and middlewares; run() serves it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from api import handlers, webhooks
from api.appkeys import ARQ, EVENT_HUB, EVENTS, REDIS, REGISTRY, SETTINGS, STORE, WEBHOOKS
from api.auth import KEYRING, KeyRing
from api.errors import error_middleware
from api.events import EventHub
from api.middleware import add_response_headers, preflight, request_context
from shared.accounts import AccountRegistry
from shared.events import EventLog
from shared.logs import configure_logging
from shared.queue import create_arq_pool
from shared.redisconn import redacted_url, redis_client
from shared.settings import Settings
from shared.store import generation_store
from shared.webhooks import webhook_store

# Multipart framing around an upload, so aiohttp's own limit never fires before ours (which
# streams and stops early); it still bounds JSON bodies.
CLIENT_MAX_SIZE_MARGIN = 64 * 1024

MIN_SHUTDOWN_TIMEOUT_SECONDS = 0.001

log = structlog.get_logger("api")


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """Decoded-string client for the store and the account registry."""
    settings = app[SETTINGS]
    client = redis_client(settings)
    app[REDIS] = client
    app[STORE] = generation_store(client, settings)
    app[REGISTRY] = AccountRegistry(client)
    app[EVENTS] = EventLog(client)
    app[WEBHOOKS] = webhook_store(client, settings)
    yield
    await client.aclose()


async def _event_hub(app: web.Application) -> AsyncIterator[None]:
    """One tail of the event log for every live stream this process serves."""
    hub = EventHub(app[STORE])
    app[EVENT_HUB] = hub
    hub.start()
    yield
    await hub.stop()


async def _arq(app: web.Application) -> AsyncIterator[None]:
    """arq's pool (bytes replies): upload jobs and the uploaded bytes."""
    pool = create_arq_pool(app[SETTINGS])
    app[ARQ] = pool
    yield
    await pool.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, preflight, error_middleware],
        client_max_size=settings.upload_max_bytes + CLIENT_MAX_SIZE_MARGIN,
    )
    app[SETTINGS] = settings
    app[KEYRING] = KeyRing(settings.secret_key, settings.admin_key)
    app.cleanup_ctx.extend([_redis, _event_hub, _arq])
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
    app.router.add_get("/api/admin/events", handlers.recent_events)
    app.router.add_get("/api/admin/holders", handlers.list_holders)
    app.router.add_patch("/api/admin/holders/{owner}", handlers.update_holder)
    app.router.add_get("/healthz", handlers.health)
    return app


def warn_if_open(settings: Settings) -> None:
    """Say loudly, in the log and on stderr, that an api without SECRET_KEY serves anyone."""
    if settings.secret_key:
        return
    message = (
        "SECRET_KEY is empty: the api is open to anyone who can reach it; set SECRET_KEY to require a key"
    )
    log.warning(message, host=settings.api_host, port=settings.api_port)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; requests in flight get shutdown_grace_seconds to finish."""
    configure_logging(settings.log_level, settings.log_json)
    warn_if_open(settings)
    log.info(
        "api starting",
        host=settings.api_host,
        port=settings.api_port,
        redis=redacted_url(settings.redis_url),
        sentinels=",".join(f"{host}:{port}" for host, port in settings.redis_sentinels) or None,
    )
    web.run_app(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        # aiohttp reads a timeout of 0 as "wait forever"; SHUTDOWN_GRACE_SECONDS=0 means "do not wait".
        shutdown_timeout=max(settings.shutdown_grace_seconds, MIN_SHUTDOWN_TIMEOUT_SECONDS),
        access_log=None,  # request_context logs each request once, with its request_id
        print=None,
    )
