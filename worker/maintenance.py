"""Background upkeep: usage readings, session keep-alive and the sweeper that leaves nothing stuck.

Each task runs in every worker, guarded by a lock in Redis so that one worker does it per period.
"""

from __future__ import annotations

import asyncio
import os
import time

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix

from shared import keys
from shared.accounts import Account, AccountState
from shared.health import Problem
from shared.models import GenerationRecord
from shared.queue import SUBMIT_JOB
from shared.states import NOT_SUBMITTED, FailureReason, Phase
from worker.context import Deps
from worker.loops import run_loop
from worker.upstream.errors import LumaError

log = structlog.get_logger(__name__)

# Deadlines are looked at by one worker at a time, about this often.
DEADLINES_EVERY_MS = 500


async def refresh_usage(deps: Deps, account: Account) -> None:
    """Read the account's capacity; a claim made meanwhile makes the reading stale, so retry later."""
    seen = await deps.scheduler.usage_seq(account.name)
    try:
        usage = await deps.provider(account).usage()
    except LumaError as error:
        log.warning("usage_refresh_failed", account=account.name, error=str(error))
        await deps.upstream_failed(account.name, error)
        return
    if not await deps.scheduler.store_usage(account.name, seen, usage):
        # Something changed meanwhile; try again on the next tick rather than store a stale count.
        await deps.redis.delete(keys.usage_lock(account.name))
        return
    # None left makes it spent; a new month (or a bigger plan, or a top-up) brings a spent one back.
    # An official balance is spent once it cannot pay for the cheapest create.
    enough = min(deps.settings.price_table().values()) if account.official else 1
    await deps.health.on_usage(account.name, usage.available, enough=enough)


async def keep_alive(deps: Deps, account: Account) -> None:
    """A cheap authenticated call keeps the session's cookies rotating, as a browser would."""
    try:
        await deps.provider(account).keep_alive()
    except LumaError as error:
        log.info("heartbeat_failed", account=account.name, error=str(error))
        if error.problem is Problem.EXPIRED:
            # Only a dead session counts against the account here: a keep-alive is best effort.
            await deps.upstream_failed(account.name, error)


async def upkeep_once(deps: Deps, holder: str) -> None:
    settings = deps.settings
    for account in await deps.registry.all():
        if account.state in (AccountState.EXPIRED, AccountState.DISABLED):
            continue
        # An account whose usage is unknown cannot take work: read it as soon as possible.
        usage_period = settings.usage_refresh_seconds if account.available is not None else 1.0
        if await deps.redis.set(keys.usage_lock(account.name), holder, nx=True, px=int(usage_period * 1000)):
            await refresh_usage(deps, account)
        if await deps.redis.set(
            keys.heartbeat_lock(account.name), holder, nx=True, px=int(settings.heartbeat_seconds * 1000)
        ):
            await keep_alive(deps, account)


async def enforce_deadlines(deps: Deps, now: float) -> None:
    """No accepted generation waits forever: start deadlines, and a pool that cannot serve."""
    for gen_id in await deps.store.due_start_deadlines(now):
        record = await deps.store.get(gen_id)
        if record is not None and record.phase in NOT_SUBMITTED:
            await deps.store.take_back(
                record,
                FailureReason.START_DEADLINE_EXCEEDED,
                "it was not submitted to the upstream before its start_deadline_seconds",
            )
    accounts = await deps.registry.all()
    if any(account.state is AccountState.ACTIVE for account in accounts):
        await deps.redis.delete(keys.POOL_UNUSABLE_SINCE)
        return
    # Every account is expired, spent or disabled (or there is none): how long already?
    await deps.redis.set(keys.POOL_UNUSABLE_SINCE, int(now * 1000), nx=True)
    since = int(await deps.redis.get(keys.POOL_UNUSABLE_SINCE) or now * 1000) / 1000
    deadline = deps.settings.no_account_deadline_seconds
    if now - since < deadline:
        return
    for record in await deps.store.get_many(await deps.store.waiting_ids()):
        if max(record.created_ts, since) + deadline <= now:
            await deps.store.take_back(
                record,
                FailureReason.NO_ACCOUNT,
                f"no account could take it for {int(deadline)} s (every account expired, spent or disabled)",
                expect={Phase.WAITING},
            )


async def sweep(deps: Deps) -> None:
    """Find claims whose job is gone and generations left behind by a crash, and move them on."""
    for name in await deps.registry.names():
        for gen_id in await deps.redis.smembers(keys.submitting(name)):
            await _sweep_claim(deps, name, str(gen_id))
    await _sweep_leases(deps)
    await fail_unservable(deps, time.time())


def servable(record: GenerationRecord, accounts: list[Account]) -> bool:
    """Whether some active account could run it as it asks: its kind, its account, its price."""
    for account in accounts:
        if account.state is not AccountState.ACTIVE:
            continue
        if record.pin_account and account.name != record.pin_account:
            continue
        if record.provider and account.kind != record.provider:
            continue
        if account.official and (account.available or 0) < (record.price_cents or 0):
            continue
        return True
    return False


async def fail_unservable(deps: Deps, now: float) -> None:
    """A waiting generation that no active account can run (its provider's accounts are all out,
    the account it continues is gone, or no official balance can pay its price) fails
    `no_account` once that has lasted NO_ACCOUNT_DEADLINE_SECONDS, instead of waiting forever."""
    accounts = await deps.registry.all()
    waiting = await deps.store.get_many(await deps.store.waiting_ids())
    since = await deps.redis.hgetall(keys.UNSERVABLE_SINCE)
    stuck = {record.id: record for record in waiting if not servable(record, accounts)}
    gone = [gen_id for gen_id in since if gen_id not in stuck]
    if gone:
        await deps.redis.hdel(keys.UNSERVABLE_SINCE, *gone)
    deadline = deps.settings.no_account_deadline_seconds
    for gen_id, record in stuck.items():
        first = float(since[gen_id]) / 1000 if gen_id in since else None
        if first is None:
            await deps.redis.hset(keys.UNSERVABLE_SINCE, gen_id, str(int(now * 1000)))
        elif now - first >= deadline:
            await deps.store.take_back(
                record,
                FailureReason.NO_ACCOUNT,
                f"no account could run it as it asks (provider {record.provider or 'any'}"
                f"{', account ' + record.pin_account if record.pin_account else ''}) for {int(deadline)} s",
                expect={Phase.WAITING},
            )
            await deps.redis.hdel(keys.UNSERVABLE_SINCE, gen_id)


async def _sweep_claim(deps: Deps, account: str, gen_id: str) -> None:
    job_id = keys.submit_job_id(gen_id)
    if await deps.arq.exists(job_key_prefix + job_id, in_progress_key_prefix + job_id):
        return
    record = await deps.store.get(gen_id)
    if record is None or record.terminal:
        await deps.scheduler.release(
            gen_id, account, restore_capacity=record is None or not record.upstream_id
        )
        return
    if record.upstream_id:
        await deps.scheduler.mark_running(
            gen_id, record.account or account, record.submitted_ts or time.time(), first_poll_in=0
        )
        return
    if record.account not in (None, account):
        # A stale claim on another account; the generation moved on.
        await deps.scheduler.release(gen_id, account, restore_capacity=True)
        return
    # The claim's job never got enqueued (or vanished): enqueue it. If the dispatcher is doing the
    # same right now, the job id makes the two one job.
    log.warning("claim_without_job", generation_id=gen_id, account=account)
    await deps.arq.enqueue_job(SUBMIT_JOB, gen_id, account, _job_id=job_id)


async def _sweep_leases(deps: Deps) -> None:
    """A lease must belong to a claimed or running generation; anything else is a leak."""
    for name in await deps.registry.names():
        held = await deps.redis.zrange(keys.leases(name), 0, -1)
        if not held:
            continue
        async with deps.redis.pipeline(transaction=False) as pipe:
            for gen_id in held:
                pipe.sismember(keys.submitting(name), gen_id)
                pipe.zscore(keys.running(name), gen_id)
            answers = await pipe.execute()
        for index, gen_id in enumerate(held):
            if not answers[2 * index] and answers[2 * index + 1] is None:
                await deps.scheduler.drop_lease(str(gen_id), name)


async def run_upkeep(deps: Deps, stopping: asyncio.Event) -> None:
    holder = str(os.getpid())
    settings = deps.settings
    last_sweep = 0.0

    async def step() -> float:
        nonlocal last_sweep
        await upkeep_once(deps, holder)
        if await deps.redis.set(keys.DEADLINES_LOCK, holder, nx=True, px=DEADLINES_EVERY_MS):
            await enforce_deadlines(deps, time.time())
        if time.monotonic() - last_sweep >= settings.sweep_interval_seconds:
            last_sweep = time.monotonic()
            lock_ms = int(settings.sweep_interval_seconds * 1000)
            if await deps.redis.set(keys.SWEEP_LOCK, holder, nx=True, px=lock_ms):
                await sweep(deps)
        return min(1.0, settings.poll_min_interval_seconds)

    await run_loop("upkeep", step, stopping)
