"""How a generation's record follows what the upstream says, and how it ends.

Used by the submit job, the poller and the sweeper alike, so a generation ends the same way
whoever notices first.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from shared import keys
from shared.models import FailureReason, GenerationRecord, Phase, State
from worker.context import Deps

log = structlog.get_logger(__name__)


def video_url(upstream: dict[str, Any]) -> str | None:
    video = upstream.get("video")
    if isinstance(video, dict) and isinstance(video.get("url"), str) and video["url"]:
        return str(video["url"])
    return None


def public_state(upstream: dict[str, Any]) -> State:
    """Callers see `completed` only with a video URL: until then it is still `processing`."""
    state = upstream.get("state")
    if state == "completed":
        return "completed" if video_url(upstream) else "processing"
    if state == "pending":
        return "pending"
    if state == "failed":
        return "failed"
    # An unknown state is a live one: keep polling rather than guess an end.
    return "processing"


def upstream_failure_message(upstream: dict[str, Any]) -> str:
    for field in ("failure_reason", "failure_message", "error", "reason", "detail"):
        value = upstream.get(field)
        if isinstance(value, str) and value:
            return value
    return "the upstream reported the generation as failed"


async def pin_for(deps: Deps, record: GenerationRecord) -> str | None:
    """The account holding the generation's uploaded image, if the image is one of ours."""
    if not record.image:
        return None
    pinned = await deps.redis.get(keys.upload_account(record.image))
    return str(pinned) if pinned else None


async def back_to_queue(deps: Deps, record: GenerationRecord, account: str, *, restore: bool) -> None:
    """No create was made: the generation goes first in its owner's queue again."""
    record.phase = Phase.WAITING
    record.account = None
    record.intent = None
    await deps.store.save(record)
    await deps.scheduler.requeue_front(
        record.id, record.owner, account, pin=await pin_for(deps, record), restore_capacity=restore
    )


async def observe(deps: Deps, record: GenerationRecord, upstream: dict[str, Any], now: float) -> bool:
    """Fold one upstream reading into the record; True once the generation has ended."""
    record.upstream = upstream
    record.observed_ts = now
    state = public_state(upstream)
    if upstream.get("state") == "completed" and state != "completed":
        # Luma says completed before the URL is there; wait for it, but not forever.
        record.completed_without_video_ts = record.completed_without_video_ts or now
        if now - record.completed_without_video_ts > deps.settings.missing_video_deadline_seconds:
            await finish_failed(
                deps,
                record,
                FailureReason.COMPLETED_WITHOUT_VIDEO,
                "the upstream reported completion but never gave a video URL",
            )
            return True
    if state == "completed":
        await finish(deps, record, "completed")
        return True
    if state == "failed":
        record.failure_reason = FailureReason.UPSTREAM_FAILED.value
        record.failure_message = upstream_failure_message(upstream)
        await finish(deps, record, "failed")
        return True
    if (
        state == "pending"
        and now - (record.submitted_ts or now) > deps.settings.upstream_pending_deadline_seconds
    ):
        await finish_failed(
            deps,
            record,
            FailureReason.UPSTREAM_PENDING_TIMEOUT,
            "the upstream kept the generation pending past the deadline",
        )
        return True
    record.state = state
    record.last_live_ts = now
    await deps.store.save(record)
    return False


async def finish_failed(deps: Deps, record: GenerationRecord, reason: FailureReason, message: str) -> None:
    record.failure_reason = reason.value
    record.failure_message = message
    await finish(deps, record, "failed")


async def finish(deps: Deps, record: GenerationRecord, state: State) -> None:
    """Terminal: save, give the slot back, and learn how long a generation takes."""
    now = time.time()
    record.state = state
    record.phase = Phase.DONE
    record.finished_ts = now
    await deps.store.save(record)
    if record.account:
        # Capacity was only spent if a create was made.
        await deps.scheduler.release(record.id, record.account, restore_capacity=record.upstream_id is None)
    if state == "completed" and record.submitted_ts:
        measured = await _measured_seconds(deps, record, record.submitted_ts, now)
        if measured is not None:
            await deps.store.record_generation_seconds(measured)
    log.info(
        "generation_finished",
        generation_id=record.id,
        state=state,
        failure_reason=record.failure_reason,
        account=record.account,
    )


async def _measured_seconds(deps: Deps, record: GenerationRecord, start: float, now: float) -> float | None:
    """How long the run took upstream, as far as our readings can tell.

    If a reading showed it still running, it ended between that reading and this one: take the
    middle. If none did, `now - start` is only an upper bound: evidence when it is below the
    current estimate (which is then too high), and nothing otherwise. Folding in the bare middle
    of [start, now] instead would pull the estimate down to half the real time.
    """
    if record.last_live_ts is not None and record.last_live_ts > start:
        return max(0.0, (record.last_live_ts + now) / 2 - start)
    upper_bound = now - start
    return upper_bound if upper_bound < await deps.store.generation_seconds() else None
