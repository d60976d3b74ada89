"""How a generation follows what the upstream says, and how it ends.

Used by the submit job, the poller and the sweeper alike, so a generation ends the same way
whoever notices first. Every change goes through the store's transition; when two notice at once,
the state table lets one of them win and the other finds nothing left to do.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog

from shared import keys
from shared.accounts import UnknownAccount
from shared.models import GenerationRecord
from shared.states import UPSTREAM_LIVE, FailureReason, Phase
from shared.store import Transition
from worker.context import Deps
from worker.upstream.errors import LumaError
from worker.upstream.models import UpstreamGeneration

log = structlog.get_logger(__name__)


def phase_of(reading: UpstreamGeneration, current: Phase | None = None) -> Phase:
    """Our phase for an upstream reading: `completed` only with a video URL, never backwards."""
    if reading.state == "completed":
        return Phase.COMPLETED if reading.video_url else Phase.PROCESSING
    if reading.state == "failed":
        return Phase.FAILED
    if reading.state == "pending" and current is not Phase.PROCESSING:
        return Phase.QUEUED_UPSTREAM
    return Phase.PROCESSING


# How the upstream words a failure that is about the generation's image, not its rendering: the
# simulator says "image not found: URL"; Luma's web API has no fixed field (UPSTREAM.md §1).
IMAGE_MISSING = re.compile(r"\bimage\b.*\b(not found|missing|does not exist|no such)", re.IGNORECASE)


def failure_reason_of(message: str) -> FailureReason:
    """The reason a failed upstream reading gets: a missing image is said as such."""
    if IMAGE_MISSING.search(message):
        return FailureReason.UPSTREAM_IMAGE_MISSING
    return FailureReason.UPSTREAM_FAILED


async def pin_for(deps: Deps, record: GenerationRecord) -> str | None:
    """The account holding the generation's uploaded image, if the image is one of ours."""
    if not record.image:
        return None
    pinned = await deps.redis.get(keys.upload_account(record.image))
    return str(pinned) if pinned else None


async def back_to_queue(
    deps: Deps, record: GenerationRecord, account: str, *, restore: bool, fence: int | None = None
) -> bool:
    """No create was made: the generation goes first in its owner's queue again (False: it could not)."""
    return await deps.scheduler.requeue_front(
        record.id,
        record.owner,
        account,
        pin=await pin_for(deps, record),
        restore_capacity=restore,
        fence=fence,
    )


async def observe(
    deps: Deps, record: GenerationRecord, reading: UpstreamGeneration, now: float
) -> GenerationRecord | None:
    """Fold one upstream reading into the record: the record as it now stands, None once it ended."""
    to = phase_of(reading, record.phase)
    fields: dict[str, Any] = {"upstream": reading.raw, "observed_ts": now}
    if reading.video_url:
        fields["video_url"] = reading.video_url
    if reading.state == "completed" and to is not Phase.COMPLETED:
        # Luma says completed before the URL is there; wait for it, but not forever.
        since = record.completed_without_video_ts or now
        fields["completed_without_video_ts"] = since
        if now - since > deps.settings.missing_video_deadline_seconds:
            await finish_failed(
                deps,
                record,
                FailureReason.COMPLETED_WITHOUT_VIDEO,
                "the upstream reported completion but never gave a video URL",
                **fields,
            )
            return None
    if to is Phase.FAILED:
        message = reading.failure_message or "the upstream reported the generation as failed"
        await finish_failed(deps, record, failure_reason_of(message), message, **fields)
        return None
    if to is Phase.COMPLETED:
        fields.update(await download_link(deps, record))
        await finish(deps, record, Phase.COMPLETED, **fields)
        return None
    if (
        to is Phase.QUEUED_UPSTREAM
        and now - (record.submitted_ts or now) > deps.settings.upstream_pending_deadline_seconds
    ):
        await finish_failed(
            deps,
            record,
            FailureReason.UPSTREAM_PENDING_TIMEOUT,
            "the upstream kept the generation pending past the deadline",
            **fields,
        )
        return None
    moved = await deps.store.transition(record.id, to, expect=UPSTREAM_LIVE, last_live_ts=now, **fields)
    # Not moved: it ended (or vanished) meanwhile, which is an end as far as the caller is concerned.
    return moved.record if moved.ok else None


async def download_link(deps: Deps, record: GenerationRecord) -> dict[str, Any]:
    """A completing web generation's watermark-free link, fetched once, where its plan gives one
    (`download_url`); nothing if the account has none or the upstream will not say."""
    if not deps.settings.fetch_download_url or not record.account or not record.upstream_id:
        return {}
    try:
        account = await deps.registry.get(record.account)
    except UnknownAccount:
        return {}
    if account.official:
        return {}  # its video asset carries no watermark
    # The upstream is done with it: its slot can take the next generation while we ask. (Only the
    # lease: it stays among the running until it ends, so a crash now leaves it to the next poll.)
    await deps.scheduler.drop_lease(record.id, account.name)
    try:
        url = await deps.provider(account).download_url(record.upstream_id)
    except LumaError as error:
        log.info("download_url_unavailable", generation_id=record.id, error=str(error))
        return {}
    return {"download_url": url} if url else {}


async def finish_failed(
    deps: Deps,
    record: GenerationRecord,
    reason: FailureReason,
    message: str,
    *,
    fence: int | None = None,
    **fields: Any,
) -> bool:
    return await finish(
        deps,
        record,
        Phase.FAILED,
        fence=fence,
        failure_reason=reason.value,
        failure_message=message,
        **fields,
    )


async def finish(
    deps: Deps, record: GenerationRecord, to: Phase, *, fence: int | None = None, **fields: Any
) -> bool:
    """Terminal: move it, give the slot back, and learn how long a generation takes.

    `fence`: only while the record's intent still carries it (a submit job that may have lost
    its claim). Returns True when the generation is over, whether this call or another ended it.
    """
    now = time.time()
    moved = await deps.store.transition(record.id, to, fenced_by=fence, finished_ts=now, **fields)
    if not moved.ok:
        return _ended_elsewhere(moved)
    ended = moved.record
    assert ended is not None
    if ended.account:
        # Capacity was only spent if a create was made.
        await deps.scheduler.release(ended.id, ended.account, restore_capacity=ended.upstream_id is None)
    if to is Phase.COMPLETED and ended.submitted_ts:
        measured = await _measured_seconds(deps, ended, ended.submitted_ts, now)
        if measured is not None:
            await deps.store.record_generation_seconds(measured)
    log.info(
        "generation_finished",
        generation_id=ended.id,
        state=ended.state,
        failure_reason=ended.failure_reason,
        account=ended.account,
    )
    return True


def _ended_elsewhere(moved: Transition) -> bool:
    return moved.record is None or moved.record.terminal


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
