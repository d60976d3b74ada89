"""The submit job: one paid upstream create per generation, even when workers die mid-way.

arq delivers at least once: a job whose worker died runs again, and a job cut short by SIGTERM is
handed back. So before the paid call the generation moves to `submitting` with an intent (a
fencing token and the time); right after it, to the upstream's state with the upstream id. A job
that finds an intent without an id does not create again blindly: it looks for the generation in
the account's recent list and adopts it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from arq import Retry

from shared.accounts import UnknownAccount
from shared.imagefetch import ImageUnreachable
from shared.models import GenerationRecord
from shared.redisconn import replicas_confirm
from shared.states import TERMINAL_PHASES, FailureReason, Phase
from worker.context import Deps, deps_of
from worker.images import place_images
from worker.lifecycle import back_to_queue, failure_reason_of, finish, finish_failed, phase_of
from worker.refresh import callback_url
from worker.upstream import Provider
from worker.upstream.errors import (
    AccountExpired,
    LumaError,
    RateLimited,
    RequestNotSent,
    UpstreamRejected,
    UpstreamUnavailable,
    UsageExhausted,
)
from worker.upstream.models import UpstreamGeneration

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
    if record.phase is Phase.SUBMITTING:
        return await reconcile(deps, record)
    if record.phase is not Phase.CLAIMED or record.account != account:
        # A claim that no longer is this one (the generation went back to waiting, or was
        # claimed again elsewhere): give back what the old claim held, if it still holds it.
        await deps.scheduler.release(gen_id, account, restore_capacity=True)
        return "stale claim"
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
    try:
        # Before the intent and the paid create: an image that cannot be had costs nothing.
        placed = await place_images(deps, record, account)
    except ImageUnreachable as error:
        deps.unused_leases.pop(record.id, None)
        await finish_failed(deps, record, FailureReason.IMAGE_UNREACHABLE, str(error))
        return "image unreachable"
    except LumaError as error:
        # The account would not take the image: another try, maybe elsewhere.
        deps.unused_leases.pop(record.id, None)
        await deps.upstream_failed(account_name, error)
        await back_to_queue(deps, record, account_name, restore=True)
        return f"image upload failed: {error.problem.value}"

    fence = int(await deps.store.next_fence())
    now = time.time()
    moved = await deps.store.transition(
        record.id,
        Phase.SUBMITTING,
        expect={Phase.CLAIMED},
        fence=fence,
        intent_at=now,
        started_ts=record.started_ts or now,
        submit_attempts=record.submit_attempts + 1,
        upstream_image=placed.get("upstream_image"),
        upstream_image_end=placed.get("upstream_image_end"),
    )
    if not moved.ok or moved.record is None:
        deps.unused_leases.pop(record.id, None)
        if moved.record is None or moved.record.terminal:
            # Cancelled (or gone) between the claim and now: nothing was sent; give back its claim.
            await deps.scheduler.release(record.id, account_name, restore_capacity=True)
        # Otherwise another run of this job got there first (arq delivers at least once, and a
        # worker taken for dead may still be running): the slot is that run's now.
        return f"not submitted: {moved.outcome.value}"
    record = moved.record
    acked, wanted = await replicas_confirm(deps.redis, deps.settings)
    if acked < wanted:
        # A failover now could lose the intent, and a worker that then found no intent would create
        # again: no paid call until replicas have it. Back to the queue (the ack wait paces retries).
        deps.unused_leases.pop(record.id, None)
        return await _not_created(deps, record, fence, restore=True, why="intent not replicated")
    # From here the create may exist upstream even if we die: the slot stays taken until the
    # intent is settled, not merely until this process stops renewing it.
    await deps.scheduler.ensure_lease(record.id, account_name, deps.settings.intent_lease_seconds)
    deps.unused_leases.pop(record.id, None)
    deps.fault_point("before_create")

    await deps.scheduler.sending(record.id, account_name)
    try:
        reading = await deps.provider(account).create(
            record, callback_url=await callback_url(deps, record, account)
        )
    except RequestNotSent as error:
        # It never left this machine: nothing was created, nothing billed.
        await deps.upstream_failed(account_name, error)
        return await _not_created(deps, record, fence, restore=True, why="upstream unreachable")
    except (AccountExpired, RateLimited) as error:
        await deps.upstream_failed(account_name, error)
        return await _not_created(deps, record, fence, restore=True, why=error.problem.value)
    except UsageExhausted as error:
        await deps.upstream_failed(account_name, error)
        return await _not_created(deps, record, fence, restore=False, why="account spent")
    except UpstreamRejected as error:
        await finish_failed(deps, record, FailureReason.UPSTREAM_REJECTED, str(error), fence=fence)
        return "rejected"
    except UpstreamUnavailable as error:
        # A 5xx, a timeout or a garbled answer: the create may or may not have been made.
        await deps.upstream_failed(account_name, error)
        log.warning("create_outcome_unknown", error=str(error), status=error.status)
        if error.status is not None:
            # The upstream answered, so whatever it did is done: a create it made is in its list now.
            return await reconcile(deps, record, answered=True)
        # No answer: the request may still be on its way; look once any create could have landed.
        raise Retry(defer=_reconcile_delay(deps, record)) from error
    deps.fault_point("after_create")
    await deps.health.on_upstream_ok(account_name)
    return await record_created(deps, record, reading, fence)


async def _not_created(deps: Deps, record: GenerationRecord, fence: int, *, restore: bool, why: str) -> str:
    """The upstream answered without creating: clear the intent and wait for another slot."""
    if not await back_to_queue(deps, record, record.account or "", restore=restore, fence=fence):
        return "superseded"
    log.info("create_not_made", reason=why)
    return f"requeued: {why}"


async def record_created(
    deps: Deps, record: GenerationRecord, reading: UpstreamGeneration, fence: int
) -> str:
    """Persist the upstream id at once: everything after depends on knowing it."""
    if not await deps.store.adopt_upstream(reading.id, record.id):
        log.error("upstream_generation_taken", upstream_id=reading.id)
        raise Retry(defer=1)
    now = time.time()
    to = phase_of(reading)
    fields: dict[str, Any] = {
        "upstream_id": reading.id,
        "upstream": reading.raw,
        "submitted_ts": reading.created_ts or now,
        "observed_ts": now,
    }
    if reading.video_url:
        fields["video_url"] = reading.video_url
    if to in TERMINAL_PHASES:
        # Already over in its first answer (rare, but an upstream may say so): end it here.
        if to is Phase.FAILED:
            message = reading.failure_message or "the upstream reported the generation as failed"
            fields.update(failure_reason=failure_reason_of(message).value, failure_message=message)
        await finish(deps, record, to, fence=fence, **fields)
        return "created and finished"
    moved = await deps.store.transition(record.id, to, expect={Phase.SUBMITTING}, fenced_by=fence, **fields)
    if not moved.ok:
        log.error("intent_superseded_after_create", upstream_id=reading.id, outcome=moved.outcome.value)
        return "superseded"
    assert record.account is not None
    await deps.scheduler.mark_running(
        record.id, record.account, fields["submitted_ts"], first_poll_in=await deps.store.generation_seconds()
    )
    log.info("generation_created", upstream_id=reading.id)
    return "created"


async def reconcile(deps: Deps, record: GenerationRecord, *, answered: bool = False) -> str:
    """An earlier attempt wrote an intent and never recorded an id: find what it made, if anything.

    `answered`: the attempt got an answer (an error), so no create of it can still be on its way.
    """
    assert record.fence is not None and record.intent_at is not None and record.account is not None
    age = time.time() - record.intent_at
    try:
        account = await deps.registry.get(record.account)
        match = await find_created(deps, deps.provider(account), record)
    except AmbiguousMatch as error:
        if age < _settle_seconds(deps):
            raise Retry(defer=_reconcile_delay(deps, record)) from error
        return await _indeterminate(deps, record, str(error))
    except (UnknownAccount, AccountExpired, UpstreamUnavailable, RateLimited) as error:
        if isinstance(error, LumaError):
            await deps.upstream_failed(record.account, error)
        if age > deps.settings.upstream_silence_deadline_seconds:
            return await _indeterminate(deps, record, f"could not read the account: {error}")
        raise Retry(defer=min(30.0, max(1.0, deps.settings.poll_interval_seconds))) from error
    if match is not None:
        log.info("create_adopted", upstream_id=match.id)
        return await record_created(deps, record, match, record.fence)
    if not answered and age < _settle_seconds(deps):
        # A create sent just before the crash may not have landed yet: look again later.
        raise Retry(defer=_reconcile_delay(deps, record))
    # Every create that could have been made has had time to show in the account's list, and
    # none did: it was never made, so making it now is the first create, not a second.
    return await _not_created(deps, record, record.fence, restore=True, why="earlier attempt made no create")


async def find_created(deps: Deps, provider: Provider, record: GenerationRecord) -> UpstreamGeneration | None:
    """The account's generation made by this intent: same prompt, made around the intent's time."""
    assert record.intent_at is not None
    earliest = record.intent_at - CLOCK_SKEW_SECONDS
    limit = deps.settings.poll_list_limit
    candidates: list[UpstreamGeneration] = []
    reached_back = False
    for page in range(RECONCILE_PAGES):
        items = await provider.list_recent(offset=page * limit, limit=limit)
        for item in items:
            if item.created_ts is not None and item.created_ts < earliest:
                reached_back = True
                continue
            if item.prompt == record.prompt:
                candidates.append(item)
        if reached_back or len(items) < limit:
            reached_back = True
            break
    if not reached_back:
        raise AmbiguousMatch("the account's list does not reach back to the intent")
    if candidates:
        owners = await deps.store.upstream_owners([item.id for item in candidates])
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
        fence=record.fence,
    )
    return "indeterminate"


# After its timeout, how long a create the upstream accepted may still take to show in its list.
SETTLE_MARGIN_SECONDS = 3.0


def _settle_seconds(deps: Deps) -> float:
    """How long after an intent any create it made must be visible upstream: a create is given up
    after UPSTREAM_CREATE_TIMEOUT_SECONDS, so one still on its way has landed by then."""
    return deps.settings.upstream_create_timeout_seconds + SETTLE_MARGIN_SECONDS


def _reconcile_delay(deps: Deps, record: GenerationRecord) -> float:
    if record.intent_at is None:
        return 1.0
    remaining = record.intent_at + _settle_seconds(deps) - time.time()
    return max(0.5, min(remaining, 10.0))


async def release_unused_leases(deps: Deps) -> None:
    """On shutdown: slots taken for creates this process never made go back at once."""
    for gen_id, account in list(deps.unused_leases.items()):
        await asyncio.shield(deps.scheduler.drop_lease(gen_id, account))
        deps.unused_leases.pop(gen_id, None)
