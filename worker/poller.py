"""The poller: one list call per account per due tick covers every generation in flight there.

Polling per account rather than per generation is what keeps upstream requests near one per
generation. A poll is due when a generation is expected to end (from the measured generation
time), at most every POLL_MIN_INTERVAL and at least every POLL_INTERVAL. Across workers, a lock
per account whose time-to-live is the wait until the next due poll makes exactly one of them
poll each time.
"""

from __future__ import annotations

import asyncio
import os
import time

import structlog

from shared import keys
from shared.accounts import Account, AccountState, UnknownAccount
from shared.models import FailureReason, GenerationRecord
from shared.settings import Settings
from worker.context import Deps
from worker.lifecycle import finish_failed, observe
from worker.loops import run_loop
from worker.upstream.errors import GenerationNotFound, LumaError
from worker.upstream.models import UpstreamGeneration

log = structlog.get_logger(__name__)

# Generations not in the first page of the list are read one by one, at most this many a poll.
MAX_SINGLE_READS = 20


async def poll_due_accounts(deps: Deps, holder: str) -> None:
    for name in await deps.registry.names():
        if not await deps.redis.exists(keys.running(name)):
            continue
        # The lock's value names its holder; its lifetime guards a poll that hangs.
        guard_ms = int(deps.settings.poll_interval_seconds * 1000) + int(
            deps.settings.upstream_timeout_seconds * 1000
        )
        if not await deps.redis.set(keys.poll_lock(name), holder, nx=True, px=guard_ms):
            continue
        next_in = deps.settings.poll_interval_seconds
        try:
            next_in = await poll_account(deps, name)
        finally:
            await deps.redis.set(keys.poll_lock(name), holder, px=max(1, int(next_in * 1000)))


async def poll_account(deps: Deps, name: str) -> float:
    """Read the account's in-flight generations once; returns seconds until the next poll is due."""
    settings = deps.settings
    now = time.time()
    gen_ids = list(await deps.redis.zrange(keys.running(name), 0, -1))
    records = await deps.store.get_many(gen_ids)
    known = {record.id for record in records}
    for gen_id in set(gen_ids) - known:
        # The record outlived its retention: nobody can ask for it any more.
        await deps.scheduler.release(gen_id, name, restore_capacity=False)
    live: list[GenerationRecord] = []
    for record in records:
        if record.terminal or not record.upstream_id:
            await deps.scheduler.release(record.id, name, restore_capacity=False)
        else:
            live.append(record)
    if not live:
        return settings.poll_interval_seconds
    try:
        account = await deps.registry.get(name)
    except UnknownAccount:
        account = None
    if account is not None and account.state != AccountState.EXPIRED:
        live = await _read_upstream(deps, account, live, now)
    live = [record for record in live if not await _silent_too_long(deps, record, now)]
    await deps.scheduler.renew(name, [record.id for record in live])
    next_in = _next_poll_in(deps, live, now, await deps.store.generation_seconds())
    return polling_interval(deps.settings, account, next_in, now)


def polling_interval(settings: Settings, account: Account | None, due_in: float, now: float) -> float:
    """While Luma's callbacks about the account arrive, they say when to read, so polling (the
    fallback) waits CALLBACK_POLL_INTERVAL_SECONDS; once they stop, polling is as usual again."""
    if account is None or account.last_callback_at is None:
        return due_in
    quiet = settings.callback_poll_interval_seconds
    if now - account.last_callback_at > 2 * quiet:
        return due_in
    return max(due_in, quiet)


async def _read_upstream(
    deps: Deps, account: Account, live: list[GenerationRecord], now: float
) -> list[GenerationRecord]:
    """Observe every live generation; returns the ones still live afterwards, as they now stand."""
    provider = deps.provider(account)
    still_live: list[GenerationRecord] = []
    handled: set[str] = set()
    try:
        limit = min(deps.settings.poll_list_limit, max(10, len(live) + 5))
        listed = {item.id: item for item in await provider.list_recent(offset=0, limit=limit)}
        single_reads = 0
        readings: list[tuple[GenerationRecord, UpstreamGeneration]] = []
        for record in live:
            assert record.upstream_id is not None
            item = listed.get(record.upstream_id)
            if item is None and single_reads < MAX_SINGLE_READS:
                single_reads += 1
                try:
                    item = await provider.get(record.upstream_id)
                except GenerationNotFound:
                    handled.add(record.id)
                    await finish_failed(
                        deps,
                        record,
                        FailureReason.UPSTREAM_FAILED,
                        "the upstream no longer knows this generation",
                    )
                    continue
            handled.add(record.id)
            if item is None:
                still_live.append(record)
            else:
                readings.append((record, item))
        # Together: a generation that completes asks for its watermark-free link, one request each,
        # and five runs ending at once should not wait in line for each other's answers.
        observed = await asyncio.gather(*(observe(deps, record, item, now) for record, item in readings))
        still_live += [record for record in observed if record is not None]
        await deps.health.on_upstream_ok(account.name)
    except LumaError as error:
        log.warning("poll_failed", account=account.name, error=str(error))
        await deps.upstream_failed(account.name, error)
        # The ones not reached this time are still live as far as we know.
        still_live += [record for record in live if record.id not in handled]
    return still_live


async def _silent_too_long(deps: Deps, record: GenerationRecord, now: float) -> bool:
    last_heard = record.observed_ts or record.submitted_ts or now
    if now - last_heard <= deps.settings.upstream_silence_deadline_seconds:
        return False
    await finish_failed(
        deps,
        record,
        FailureReason.UPSTREAM_SILENT,
        f"the upstream could not be read about this generation for {int(now - last_heard)} s",
    )
    return True


def _next_poll_in(deps: Deps, live: list[GenerationRecord], now: float, generation_seconds: float) -> float:
    settings = deps.settings
    if not live:
        return settings.poll_interval_seconds
    expected_end = min((record.submitted_ts or now) + generation_seconds for record in live)
    return min(settings.poll_interval_seconds, max(settings.poll_min_interval_seconds, expected_end - now))


async def run_poller(deps: Deps, stopping: asyncio.Event) -> None:
    holder = str(os.getpid())
    tick = max(0.02, deps.settings.poll_min_interval_seconds / 4)

    async def step() -> float:
        await poll_due_accounts(deps, holder)
        return tick

    await run_loop("poller", step, stopping)
