"""The records the simulator keeps: accounts, generations, uploads, scripted faults, logged requests.

A generation stores the instants at which it changes state, never the state itself: the state at
any time is derived from the clock, so there is no background task to drive and a fake clock makes
tests exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

GenerationState = Literal["pending", "processing", "completed", "failed"]
Outcome = Literal["completed", "failed"]


@dataclass
class Generation:
    id: str
    account: str
    prompt: str
    aspect_ratio: str
    expand_prompt: bool
    loop: bool
    image_url: str | None
    image_end_url: str | None
    created_at: float
    processing_at: float  # pending until this instant
    finished_at: float  # processing until this instant, then `outcome`
    video_url_at: float  # a completed generation has no video URL before this instant
    outcome: Outcome
    failure_reason: str | None = None
    # An official API generation: its options, keyframes, callback and what it cost.
    kind: Literal["web", "official"] = "web"
    model: str | None = None
    resolution: str | None = None
    duration: str | None = None
    keyframes: dict[str, Any] | None = None
    callback_url: str | None = None
    cost_cents: int = 0
    extend_of: str | None = None  # the generation it continues

    def state_at(self, t: float) -> GenerationState:
        if t < self.processing_at:
            return "pending"
        if t < self.finished_at:
            return "processing"
        return self.outcome

    def is_terminal_at(self, t: float) -> bool:
        return t >= self.finished_at

    def video_ready_at(self, t: float) -> bool:
        return self.outcome == "completed" and t >= self.video_url_at

    def report(self, t: float) -> dict[str, Any]:
        """What tests and benchmarks read at /_sim/generations; instants not yet reached are null."""
        return {
            "id": self.id,
            "account": self.account,
            "prompt": self.prompt,
            "state": self.state_at(t),
            "created_at": self.created_at,
            "started_processing_at": self.processing_at if t >= self.processing_at else None,
            "finished_at": self.finished_at if t >= self.finished_at else None,
            "video_url_at": self.video_url_at if self.video_ready_at(t) else None,
            "outcome": self.outcome if self.is_terminal_at(t) else None,
            "failure_reason": self.failure_reason if self.is_terminal_at(t) else None,
            "image_url": self.image_url,
            "image_end_url": self.image_end_url,
            "kind": self.kind,
            "model": self.model,
            "cost_cents": self.cost_cents,
            "extend_of": self.extend_of,
            "callback_url": self.callback_url is not None,
        }


@dataclass
class OfficialAccount:
    """An official API key's account: a credit balance in cents and the documented limits."""

    name: str
    key: str
    credits_cents: int
    max_concurrency: int
    creates_per_minute: int
    creates: int = 0
    create_times: list[float] = field(default_factory=list)  # every create, oldest first
    spent_cents: int = 0
    max_in_flight: int = 0
    rejected_rate_limited: int = 0
    rejected_concurrency: int = 0
    rejected_no_credits: int = 0
    rejected_unauthenticated: int = 0
    open_generations: list[Generation] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)

    def prune_open(self, t: float) -> list[Generation]:
        self.open_generations = [g for g in self.open_generations if not g.is_terminal_at(t)]
        return self.open_generations

    def creates_within(self, start: float, end: float) -> int:
        return sum(start < at <= end for at in self.create_times)

    def max_creates_in_a_minute(self) -> int:
        """The most creates in any 60 s window, over the whole run."""
        times = self.create_times
        best, first = 0, 0
        for last, at in enumerate(times):
            while times[first] <= at - 60.0:
                first += 1
            best = max(best, last - first + 1)
        return best

    def stats(self, t: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "official",
            "credits_cents": self.credits_cents,
            "spent_cents": self.spent_cents,
            "creates": self.creates,
            "in_flight": len(self.prune_open(t)),
            "max_in_flight": self.max_in_flight,
            "max_concurrency": self.max_concurrency,
            "creates_per_minute": self.creates_per_minute,
            "max_creates_in_a_minute": self.max_creates_in_a_minute(),
            "rejected_rate_limited": self.rejected_rate_limited,
            "rejected_concurrency": self.rejected_concurrency,
            "rejected_no_credits": self.rejected_no_credits,
            "rejected_unauthenticated": self.rejected_unauthenticated,
            # The balance never goes below 0: a create it cannot pay is refused.
            "rejected_create_after_spent": self.rejected_no_credits,
        }


@dataclass
class Account:
    name: str
    user_id: str
    capacity: int
    plan: str
    token: str
    token_issued_at: float
    # Rotated luma_session values -> instant issued; insertion order is age order.
    sessions: dict[str, float] = field(default_factory=dict)
    consumed: int = 0
    expired: bool = False
    creates: int = 0
    rejected_create_after_spent: int = 0
    rejected_unauthenticated: int = 0
    creates_with_foreign_image: int = 0
    max_in_flight: int = 0
    # Generations that may still be non-terminal; pruned whenever in-flight is counted.
    open_generations: list[Generation] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)

    @property
    def available(self) -> int:
        return max(0, self.capacity - self.consumed)

    def prune_open(self, t: float) -> list[Generation]:
        self.open_generations = [g for g in self.open_generations if not g.is_terminal_at(t)]
        return self.open_generations

    def stats(self, t: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "user_id": self.user_id,
            "plan": self.plan,
            "capacity": self.capacity,
            "consumed": self.consumed,
            "available": self.available,
            "expired": self.expired,
            "creates": self.creates,
            "rejected_create_after_spent": self.rejected_create_after_spent,
            "rejected_unauthenticated": self.rejected_unauthenticated,
            "creates_with_foreign_image": self.creates_with_foreign_image,
            "in_flight": len(self.prune_open(t)),
            "max_in_flight": self.max_in_flight,
        }


@dataclass
class Upload:
    id: str
    account: str
    file_type: str
    filename: str
    signature: str
    created_at: float
    content_type: str | None = None
    data: bytes | None = None
    uploaded_at: float | None = None

    def report(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "file_type": self.file_type,
            "filename": self.filename,
            "created_at": self.created_at,
            "uploaded_at": self.uploaded_at,
            "content_type": self.content_type,
            "size": None if self.data is None else len(self.data),
        }


@dataclass
class FaultRule:
    """One scripted answer (`fail_next`), used `remaining` more times by matching requests."""

    status: int
    remaining: int
    path_contains: str | None = None
    method: str | None = None
    body: Any = None  # dict/list -> JSON, str -> sent as is, None -> {"detail": <reason phrase>}
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_contains is None or self.path_contains in path

    def report(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RequestRecord:
    time: float
    method: str
    path: str
    query: str
    account: str | None
    status: int
    duration: float
    fault: str | None  # which injected fault answered, if any
    cookie: str | None
    origin: str | None
    referer: str | None
    user_agent: str | None

    def report(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            has_cookie=self.cookie is not None,
            has_origin=self.origin is not None,
            has_referer=self.referer is not None,
            has_user_agent=self.user_agent is not None,
        )
        return data
