"""The submit job: one paid upstream create per generation, even when workers die mid-way.

arq delivers at least once: a job whose worker died runs again, and a job cut short by SIGTERM is
handed back. So before the paid call we write an intent (a fencing token, the account and the
time); right after it, the upstream id. A job that finds an intent without an id does not create
again blindly: it looks for the generation in the account's recent list and adopts it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import structlog
from arq import Retry

from shared import keys
from shared.accounts import UnknownAccount
from shared.models import FailureReason, GenerationRecord, Intent, Phase
from worker.context import Deps, deps_of
from worker.lifecycle import back_to_queue, finish_failed, public_state
from worker.luma import (
    AccountExpired,
    LumaClient,
    RateLimited,
    RequestNotSent,
    UpstreamRejected,
    UpstreamUnavailable,
    UsageExhausted,
)

log = structlog.get_logger(__name__)

# Clocks differ between us and the upstream; a create's upstream time may be this far off ours.
CLOCK_SKEW_SECONDS = 30.0
# How far back a reconcile pages through an account's list (pages of POLL_LIST_LIMIT) looking for
# the intent's time; a busy account makes more generations than this only at rates far above
# what a Luma account's concurrency allows.
RECONCILE_PAGES = 20


class AmbiguousMatch(Exception):
    """More than one upstream generation could be ours, or the list does not reach back far enough."""


async def submit(ctx: dict[str, Any], gen_id: str, account: str) -> str:
    """arq job: create `gen_id` upstream on `account` (its claim), or settle an earlier attempt."""
    deps = deps_of(ctx)
    structlog.contextvars.bind_contextvars(generation_id=gen_id, account=account)
    record = await deps.store.get(gen_id)
    if record is None:
        await deps.scheduler.release(gen_id, account, restore_capacity=True)
        return "gone"
    if record.terminal:
        await deps.scheduler.release(gen_id, account, restore_capacity=record.upstream_id is None)
        return "already finished"
    if record.upstream_id:
        # A rerun after the id was recorded: make sure the poller knows it.
        await deps.scheduler.mark_running(
            gen_id, record.account or account, record.submitted_ts or time.time(), first_poll_in=0
        )
        return "already created"
    if record.intent is not None:
        return await reconcile(deps, record)
    return await create(deps, record, account)


async def create(deps: Deps, record: GenerationRecord, account_name: str) -> str:
    try:
        account = await deps.registry.get(account_name)
    except UnknownAccount:
        await back_to_queue(deps, record, account_name, restore=False)
        return "account removed"
    if not account.usable:
        await back_to_queue(deps, record, account_name, restore=True)
        return f"account {account.state.value}"
    if not await deps.scheduler.ensure_lease(record.id, account_name):
        # A rerun whose lease expired while its worker was down, and the slot went to another.
        await back_to_queue(deps, record, account_name, restore=True)
        return "slot taken"
    deps.unused_leases[record.id] = account_name

    fence = int(await deps.redis.incr(keys.FENCE))
    now = time.time()
    record.phase = Phase.SUBMITTING
    record.account = account_name
    record.intent = Intent(fence=fence, account=account_name, at=now)
    record.started_ts = record.started_ts or now
    record.submit_attempts += 1
    await deps.store.save(record)
    # From here the create may exist upstream even if we die: the slot stays taken until the
    # intent is settled, not merely until this process stops renewing it.
    await deps.scheduler.ensure_lease(record.id, account_name, deps.settings.intent_lease_seconds)
    deps.unused_leases.pop(record.id, None)
    deps.fault_point("before_create")

    client = deps.client(account)
    try:
        upstream = await client.create(record.upstream_body())
    except RequestNotSent:
        # It never left this machine: nothing was created, nothing billed.
        await deps.upstream_fault(account_name)
        return await _not_created(deps, record, fence, restore=True, why="upstream unreachable")
    except AccountExpired as error:
        await deps.account_expired(account_name, str(error))
        return await _not_created(deps, record, fence, restore=True, why="account expired")
    except UsageExhausted as error:
        await deps.account_spent(account_name, str(error))
        return await _not_created(deps, record, fence, restore=False, why="account spent")
    except RateLimited as error:
        pause = error.retry_after or deps.settings.breaker_open_seconds
        await deps.upstream_fault(account_name, pause_seconds=pause)
        return await _not_created(deps, record, fence, restore=True, why="rate limited")
    except UpstreamRejected as error:
        await finish_failed(deps, record, FailureReason.UPSTREAM_REJECTED, str(error))
        return "rejected"
    except UpstreamUnavailable as error:
        # A 5xx, a timeout or a garbled answer: the create may or may not have been made.
        await deps.upstream_fault(account_name)
        log.warning("create_outcome_unknown", error=str(error), status=error.status)
        if error.status is not None:
            # The upstream answered, so whatever it did is done: a create it made is in its list now.
            return await reconcile(deps, record, answered=True)
        # No answer: the request may still be on its way; look once any create could have landed.
        raise Retry(defer=_reconcile_delay(deps, record.intent)) from error
    deps.fault_point("after_create")
    await deps.upstream_ok(account_name)
    return await record_created(deps, record, upstream, fence)


async def _not_created(deps: Deps, record: GenerationRecord, fence: int, *, restore: bool, why: str) -> str:
    """The upstream answered without creating: clear the intent and wait for another slot."""
    current = await deps.store.get(record.id)
    if current is None or current.intent is None or current.intent.fence != fence:
        return "superseded"
    account = record.account or ""
    await back_to_queue(deps, record, account, restore=restore)
    log.info("create_not_made", reason=why)
    return f"requeued: {why}"


async def record_created(deps: Deps, record: GenerationRecord, upstream: dict[str, Any], fence: int) -> str:
    """Persist the upstream id at once: everything after depends on knowing it."""
    upstream_id = str(upstream["id"])
    owner_of_upstream = await deps.redis.set(
        keys.upstream(upstream_id), record.id, nx=True, get=True, ex=deps.settings.record_retention_seconds
    )
    if owner_of_upstream not in (None, record.id):
        log.error("upstream_generation_taken", upstream_id=upstream_id, other=owner_of_upstream)
        raise Retry(defer=1)
    now = time.time()
    record.upstream_id = upstream_id
    record.upstream = upstream
    record.phase = Phase.RUNNING
    record.state = public_state(upstream)
    record.submitted_ts = _upstream_time(upstream) or now
    record.observed_ts = now
    if not await deps.store.save_fenced(record, fence):
        log.error("intent_superseded_after_create", upstream_id=upstream_id)
        return "superseded"
    assert record.account is not None
    await deps.scheduler.mark_running(
        record.id, record.account, record.submitted_ts, first_poll_in=await deps.store.generation_seconds()
    )
    log.info("generation_created", upstream_id=upstream_id)
    return "created"


async def reconcile(deps: Deps, record: GenerationRecord, *, answered: bool = False) -> str:
    """An earlier attempt wrote an intent and never recorded an id: find what it made, if anything.

    `answered`: the attempt got an answer (an error), so no create of it can still be on its way.
    """
    intent = record.intent
    assert intent is not None
    age = time.time() - intent.at
    try:
        account = await deps.registry.get(intent.account)
        match = await find_created(deps, deps.client(account), record, intent)
    except AmbiguousMatch as error:
        if age < _settle_seconds(deps):
            raise Retry(defer=_reconcile_delay(deps, intent)) from error
        return await _indeterminate(deps, record, str(error))
    except (UnknownAccount, AccountExpired, UpstreamUnavailable, RateLimited) as error:
        if isinstance(error, AccountExpired):
            await deps.account_expired(intent.account, str(error))
        if age > deps.settings.upstream_silence_deadline_seconds:
            return await _indeterminate(deps, record, f"could not read the account: {error}")
        raise Retry(defer=min(30.0, max(1.0, deps.settings.poll_interval_seconds))) from error
    if match is not None:
        log.info("create_adopted", upstream_id=match.get("id"))
        return await record_created(deps, record, match, intent.fence)
    if not answered and age < _settle_seconds(deps):
        # A create sent just before the crash may not have landed yet: look again later.
        raise Retry(defer=_reconcile_delay(deps, intent))
    # Every create that could have been made has had time to show in the account's list, and
    # none did: it was never made, so making it now is the first create, not a second.
    return await _not_created(deps, record, intent.fence, restore=True, why="earlier attempt made no create")


async def find_created(
    deps: Deps, client: LumaClient, record: GenerationRecord, intent: Intent
) -> dict[str, Any] | None:
    """The account's generation made by this intent: same prompt, made around the intent's time."""
    earliest = intent.at - CLOCK_SKEW_SECONDS
    limit = deps.settings.poll_list_limit
    candidates: list[dict[str, Any]] = []
    reached_back = False
    for page in range(RECONCILE_PAGES):
        items = await client.list(offset=page * limit, limit=limit)
        for item in items:
            created = _upstream_time(item)
            if created is not None and created < earliest:
                reached_back = True
                continue
            if item.get("prompt") == record.prompt and item.get("id"):
                candidates.append(item)
        if reached_back or len(items) < limit:
            reached_back = True
            break
    if not reached_back:
        raise AmbiguousMatch("the account's list does not reach back to the intent")
    if candidates:
        owners = await deps.redis.mget([keys.upstream(str(item["id"])) for item in candidates])
        candidates = [
            item for item, owner in zip(candidates, owners, strict=True) if owner in (None, record.id)
        ]
    if len(candidates) > 1:
        raise AmbiguousMatch(f"{len(candidates)} upstream generations match the prompt and time")
    return candidates[0] if candidates else None


async def _indeterminate(deps: Deps, record: GenerationRecord, detail: str) -> str:
    await finish_failed(
        deps,
        record,
        FailureReason.INDETERMINATE_CREATE,
        f"an earlier attempt may have created this generation and it could not be found ({detail}); "
        "it was not created again, to avoid paying twice",
    )
    return "indeterminate"


def _settle_seconds(deps: Deps) -> float:
    """How long after an intent any create it made must be visible upstream."""
    return deps.settings.upstream_timeout_seconds + 5.0


def _reconcile_delay(deps: Deps, intent: Intent | None) -> float:
    if intent is None:
        return 1.0
    remaining = intent.at + _settle_seconds(deps) - time.time()
    return max(0.5, min(remaining, 10.0))


def _upstream_time(item: dict[str, Any]) -> float | None:
    raw = item.get("created_at")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def release_unused_leases(deps: Deps) -> None:
    """On shutdown: slots taken for creates this process never made go back at once."""
    for gen_id, account in list(deps.unused_leases.items()):
        await asyncio.shield(deps.scheduler.drop_lease(gen_id, account))
        deps.unused_leases.pop(gen_id, None)
