"""A generation's state machine: its phases, the moves allowed between them, and what callers see.

This table is the one answer to "what can happen to a generation". The store's transition
(shared/store.py) is the only code that moves a generation between phases; it refuses any move
that is not in TRANSITIONS, and appends every move it makes to the event log (shared/events.py).

Callers see only the seed's four public states; a phase is finer, and says what we hold for it:

    phase              public      holds                             leaves by
    waiting            pending     a place in its owner's queue      a claim, a cancel or a deadline
    claimed            pending     a slot and a capacity unit        its submit job writing an intent
    submitting         pending     an intent: the create may exist   the upstream id, or proof of none
    queued_upstream    pending     an upstream id, Luma's own queue  the upstream starting or ending it
    processing         processing  an upstream id, rendering         the upstream ending it
    completed          completed   a video URL                       (terminal)
    failed             failed      a failure_reason                  (terminal)

(A created generation goes back to waiting only when its account is removed with force.)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

State = Literal["pending", "processing", "completed", "failed"]
PUBLIC_STATES: tuple[State, ...] = ("pending", "processing", "completed", "failed")


class Phase(StrEnum):
    WAITING = "waiting"  #: in its owner's wait queue; holds nothing
    CLAIMED = "claimed"  #: holds a slot on `account`; its submit job is queued or running
    SUBMITTING = "submitting"  #: an intent (fence) is written: the paid create may be in flight
    QUEUED_UPSTREAM = "queued_upstream"  #: created upstream (`upstream_id`), waiting in Luma's queue
    PROCESSING = "processing"  #: created upstream and rendering
    COMPLETED = "completed"  #: terminal: the upstream gave a video URL
    FAILED = "failed"  #: terminal: `failure_reason` says why (cancelled included)


PUBLIC_STATE: dict[Phase, State] = {
    Phase.WAITING: "pending",
    Phase.CLAIMED: "pending",
    Phase.SUBMITTING: "pending",
    Phase.QUEUED_UPSTREAM: "pending",
    Phase.PROCESSING: "processing",
    Phase.COMPLETED: "completed",
    Phase.FAILED: "failed",
}

# The allowed moves. A phase listed among its own successors may be written again without a move
# (an upstream reading that changes only what we observed); such a write appends no event.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    # claimed by a dispatcher; failed: cancelled, or no account ever came, or its start deadline
    Phase.WAITING: frozenset({Phase.CLAIMED, Phase.FAILED}),
    # submitting: its job wrote the intent; waiting: handed back unused; failed: cancelled
    Phase.CLAIMED: frozenset({Phase.SUBMITTING, Phase.WAITING, Phase.FAILED}),
    # the create answered (any upstream state), proved not made (back to waiting), or was refused
    Phase.SUBMITTING: frozenset(
        {Phase.WAITING, Phase.QUEUED_UPSTREAM, Phase.PROCESSING, Phase.COMPLETED, Phase.FAILED}
    ),
    # waiting: its account was removed by an operator who forced it (DELETE ?force=true), so it
    # is made again elsewhere; nothing else moves a created generation back.
    Phase.QUEUED_UPSTREAM: frozenset(
        {Phase.QUEUED_UPSTREAM, Phase.PROCESSING, Phase.COMPLETED, Phase.FAILED, Phase.WAITING}
    ),
    Phase.PROCESSING: frozenset({Phase.PROCESSING, Phase.COMPLETED, Phase.FAILED, Phase.WAITING}),
    Phase.COMPLETED: frozenset(),
    Phase.FAILED: frozenset(),
}

TERMINAL_PHASES: frozenset[Phase] = frozenset(phase for phase, nexts in TRANSITIONS.items() if not nexts)
# Phases in which nothing has reached the upstream yet: a cancel can still take the generation back.
NOT_SUBMITTED: frozenset[Phase] = frozenset({Phase.WAITING, Phase.CLAIMED})
# Phases in which the generation exists upstream and is followed by the poller.
UPSTREAM_LIVE: frozenset[Phase] = frozenset({Phase.QUEUED_UPSTREAM, Phase.PROCESSING})


def allowed(current: Phase, to: Phase) -> bool:
    return to in TRANSITIONS[current]


class FailureReason(StrEnum):
    """Machine-readable reasons a generation ended `failed`; `failure_message` says more."""

    UPSTREAM_FAILED = "upstream_failed"  #: the upstream rendered and reported failure
    UPSTREAM_REJECTED = "upstream_rejected"  #: the upstream refused the create as sent (4xx)
    INDETERMINATE_CREATE = "indeterminate_create"  #: may exist upstream, not found: not made again
    UPSTREAM_PENDING_TIMEOUT = "upstream_pending_timeout"  #: Luma kept it pending past the deadline
    UPSTREAM_SILENT = "upstream_silent"  #: the upstream could not be read about it for too long
    COMPLETED_WITHOUT_VIDEO = "completed_without_video"  #: completed, never gave a video URL
    NO_ACCOUNT = "no_account"  #: no account could take it before NO_ACCOUNT_DEADLINE_SECONDS
    CANCELLED = "cancelled"  #: its owner took it back before it reached the upstream
    START_DEADLINE_EXCEEDED = "start_deadline_exceeded"  #: not submitted by its start_deadline
    IMAGE_UNREACHABLE = "image_unreachable"  #: its external image could not be fetched: nothing was spent
    #: the upstream could not find its image (an upload that expired or never arrived)
    UPSTREAM_IMAGE_MISSING = "upstream_image_missing"
