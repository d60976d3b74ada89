"""The worker process: arq jobs (submit, upload) plus the dispatcher, poller, upkeep and webhook loops."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from typing import Any

import structlog
from arq import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.accounts import AccountRegistry
from shared.events import EventLog
from shared.files import file_store
from shared.health import AccountHealth
from shared.imagefetch import public_only_session
from shared.logs import configure_logging
from shared.queue import REFRESH_JOB, SUBMIT_JOB, UPLOAD_JOB, create_arq_pool, deserialize_job, serialize_job
from shared.redisconn import durability_gap, redis_client
from shared.settings import Settings
from shared.store import generation_store
from worker.context import Deps, deps_of
from worker.dispatcher import run_dispatcher
from worker.liveness import Liveness, new_worker_id, run_liveness
from worker.maintenance import run_upkeep
from worker.metrics import serve_metrics
from worker.poller import run_poller
from worker.refresh import refresh
from worker.scheduler import Scheduler
from worker.submit import release_unused_leases, submit
from worker.uploads import upload
from worker.upstream.web import create_session
from worker.webhooks import run_webhook_reader, run_webhook_sender

log = structlog.get_logger(__name__)

MAX_RETRY_DELAY_SECONDS = 10.0

NO_ACCOUNT_MESSAGE = (
    "No Luma account is configured. Set ACCESS_TOKEN (one account's cookie) or LUMA_ACCOUNTS "
    '(a JSON list like [{"name": "main", "cookie": "access_token=..."}] or, for the official API, '
    '[{"name": "api", "kind": "official", "api_key": "luma-..."}]), add one through the admin '
    "API, or run `luma-queue dev` to work against the bundled simulator."
)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    redis = redis_client(settings)
    health = AccountHealth(
        redis,
        breaker_failures=settings.breaker_failures,
        breaker_open_seconds=settings.breaker_open_seconds,
        event_log_max_len=settings.event_log_max_len,
    )
    registry = AccountRegistry(redis, health)
    await registry.sync_from_settings(settings.accounts())
    store = generation_store(redis, settings)
    deps = Deps(
        settings=settings,
        redis=redis,
        arq=ctx["redis"],
        session=create_session(),
        store=store,
        registry=registry,
        health=health,
        scheduler=Scheduler(
            redis,
            lease_seconds=settings.lease_ttl_seconds,
            store=store,
            default_price_cents=settings.official_price(None, None, None),
        ),
        events=EventLog(redis),
        files=file_store(settings),
        fetch_session=public_only_session(settings.allow_private_networks),
    )
    ctx["deps"] = deps
    liveness = Liveness(redis, worker_id=new_worker_id(), heartbeat_seconds=settings.worker_heartbeat_seconds)
    await liveness.beat()
    ctx["liveness"] = liveness
    stopping = asyncio.Event()
    ctx["stopping"] = stopping
    ctx["loops"] = [
        asyncio.create_task(run_liveness(liveness, stopping), name="liveness"),
        asyncio.create_task(run_poller(deps, stopping), name="poller"),
        asyncio.create_task(run_upkeep(deps, stopping), name="upkeep"),
        asyncio.create_task(run_dispatcher(deps, stopping), name="dispatcher"),
        asyncio.create_task(run_webhook_reader(deps, stopping), name="webhook_reader"),
        asyncio.create_task(run_webhook_sender(deps, stopping), name="webhook_sender"),
    ]
    ctx["metrics_server"] = serve_metrics(settings.worker_metrics_host, settings.worker_metrics_port)
    log.info("worker_started", accounts=await registry.names())
    if gap := await durability_gap(redis, settings):
        log.warning("redis_not_durable", problem=gap, fix="appendonly yes, appendfsync always")


async def shutdown(ctx: dict[str, Any]) -> None:
    if "deps" not in ctx or ctx.get("shut_down"):
        return
    ctx["shut_down"] = True
    deps = deps_of(ctx)
    ctx["stopping"].set()
    for task in ctx["loops"]:
        task.cancel()
    await asyncio.gather(*ctx["loops"], return_exceptions=True)
    try:
        await release_unused_leases(deps)
        await ctx["liveness"].leave()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        log.warning("shutdown_without_redis", unreleased=len(deps.unused_leases))
    await deps.session.close()
    await deps.fetch_session.close()
    await deps.redis.aclose()
    if ctx.get("metrics_server") is not None:
        ctx["metrics_server"].shutdown()
    log.info("worker_stopped")


async def on_job_start(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), job_try=ctx.get("job_try"))
    # Should this process die now, another worker frees the job within seconds (worker/liveness.py).
    await ctx["liveness"].job_started(ctx["job_id"])


async def after_job_end(ctx: dict[str, Any]) -> None:
    await ctx["liveness"].job_ended(ctx["job_id"])


def build_worker(settings: Settings) -> Worker:
    return Worker(
        functions=[
            # keep_result=0 frees the job id at once, so a generation sent back to its queue can
            # be submitted again later under the same id.
            func(
                submit,
                name=SUBMIT_JOB,
                timeout=settings.submit_job_timeout_seconds,
                keep_result=0,
                max_tries=10_000,
            ),
            func(
                upload, name=UPLOAD_JOB, timeout=settings.upload_timeout_seconds, keep_result=300, max_tries=3
            ),
            # keep_result=0: a callback arriving after this refresh ran triggers another.
            func(refresh, name=REFRESH_JOB, timeout=settings.upstream_timeout_seconds * 2, keep_result=0),
        ],
        redis_pool=create_arq_pool(settings),
        queue_name=keys.ARQ_QUEUE,
        ctx={"settings": settings},
        on_startup=startup,
        on_shutdown=shutdown,
        on_job_start=on_job_start,
        after_job_end=after_job_end,
        max_jobs=settings.worker_max_jobs,
        poll_delay=0.05,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        job_completion_wait=math.ceil(settings.shutdown_grace_seconds),
        handle_signals=True,
    )


async def _registry_has_accounts(settings: Settings) -> bool:
    redis = redis_client(settings)
    try:
        return bool(await AccountRegistry(redis).names())
    finally:
        await redis.aclose()


def run(settings: Settings) -> int:
    """Run a worker until SIGTERM/SIGINT; reconnects with backoff while Redis is away."""
    configure_logging(settings.log_level, settings.log_json)
    if not settings.accounts():
        problem = NO_ACCOUNT_MESSAGE
        try:
            has_accounts = asyncio.run(_registry_has_accounts(settings))
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            has_accounts = False
            problem += f" (Accounts added through the admin API could not be read either: {error})"
        if not has_accounts:
            print(f"luma-queue worker: {problem}", file=sys.stderr)
            return 2
    stop_requested = False

    def request_stop(signum: int, _: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    delay = 0.5
    while not stop_requested:
        worker = build_worker(settings)
        started = time.monotonic()
        try:
            worker.run()
            return 0
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as error:
            # arq's close() gives up at its first Redis call when Redis is gone, before on_shutdown:
            # stop this run's loops here, or they would go on beside the next run's.
            worker.loop.run_until_complete(shutdown(worker.ctx))
            if time.monotonic() - started > MAX_RETRY_DELAY_SECONDS * 3:
                delay = 0.5  # a run that lasted: this outage starts the backoff afresh
            log.warning("redis_unavailable_retrying", error=str(error), retry_in=delay)
        # Between two arq runs a signal must still stop us cleanly.
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        deadline = time.monotonic() + delay
        while not stop_requested and time.monotonic() < deadline:
            time.sleep(0.05)
        delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
    return 0
