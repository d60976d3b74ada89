"""The event log: what happened, as data that anything may read without touching the code that
made it happen.

Every transition of a generation (shared/store.py) and every change of an account's health
(shared/health.py) appends one entry, in the same atomic step as the change itself:

    stream `events`            everything, trimmed to EVENT_LOG_MAX_LEN (approximately)
    stream `events:{owner}`    one key holder's generation events, with the same entry ids,
                               trimmed to HOLDER_EVENTS_MAX_LEN: the live stream's resume window
    list `gen:{id}:events`     one generation's own history, kept as long as its record

An entry's id is the stream id (`<ms>-<seq>`), increasing; it is the `id:` of the live stream and
what `Last-Event-ID` names. The fields of a generation event:

    kind           "generation"
    generation_id  our id
    owner          the key holder (a hash of the key, never the key)
    from, to       phases (shared/states.py); `from` is "" for the first event (to "waiting")
    prev_state, state   the public states before and after ("" before the first)
    at             milliseconds since the epoch, by Redis's clock
    account        the account it is on, when it is on one
    failure_reason set once it failed
    batch_id       when it was submitted in a batch
    doc            (log only, and only when the public state changed on a generation that has a
                   callback_url) the record as it was right after the change, for its webhook

and of an account event: kind "account", account, from, to (an AccountState, or "cooling"),
reason, at. Readers keep their own cursor: a consumer group (webhooks), a last id (the live
stream), or none (a generation's history is read whole).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from shared import keys
from shared.models import GenerationRecord
from shared.states import Phase, State


class GenerationEvent(BaseModel):
    """One transition of one generation, as the log holds it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str
    kind: Literal["generation"] = "generation"
    generation_id: str
    owner: str
    from_phase: Phase | None = Field(default=None, alias="from")
    to_phase: Phase = Field(alias="to")
    prev_state: State | None = None
    state: State
    at: int
    account: str | None = None
    failure_reason: str | None = None
    batch_id: str | None = None
    doc: str | None = Field(default=None, repr=False)

    @property
    def state_changed(self) -> bool:
        return self.prev_state != self.state

    @property
    def at_iso(self) -> str:
        return datetime.fromtimestamp(self.at / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"

    def record(self) -> GenerationRecord | None:
        """The record right after this event, when the log kept it (see `doc`)."""
        return GenerationRecord.model_validate_json(self.doc) if self.doc else None

    def public(self, *, admin: bool = False) -> dict[str, Any]:
        """The event as a caller sees it; the admin also sees the owner and the account."""
        shown: dict[str, Any] = {
            "id": self.id,
            "generation_id": self.generation_id,
            "from": self.from_phase.value if self.from_phase else None,
            "to": self.to_phase.value,
            "prev_state": self.prev_state,
            "state": self.state,
            "at": self.at_iso,
            "failure_reason": self.failure_reason,
            "batch_id": self.batch_id,
        }
        if admin:
            shown.update(owner=self.owner, account=self.account)
        return shown


class AccountEvent(BaseModel):
    """One change of an account's health."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str
    kind: Literal["account"] = "account"
    account: str
    from_state: str = Field(alias="from")
    to_state: str = Field(alias="to")
    reason: str = ""
    at: int


Event = GenerationEvent | AccountEvent


class EventsQuery(BaseModel):
    """The query of GET /api/admin/events: a page of the newest entries, before an id."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=100, ge=1, le=1000)
    before: str | None = Field(default=None, pattern=r"^\d{1,20}-\d{1,20}$")


def parse_entry(entry_id: str, fields: dict[str, str]) -> Event:
    """A stream entry as a typed event; empty fields are absent ones."""
    present = {name: value for name, value in fields.items() if value != ""}
    if fields.get("kind") == "account":
        return AccountEvent.model_validate({"id": entry_id, "from": "", **present})
    return GenerationEvent.model_validate({"id": entry_id, **present})


class EventLog:
    """Reads of the log; writes happen only inside the store's and health's Lua steps."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def history(self, gen_id: str) -> list[GenerationEvent]:
        """Every transition of one generation, oldest first."""
        entries = await self.redis.lrange(keys.generation_events(gen_id), 0, -1)
        events = []
        for raw in entries:
            fields = json.loads(raw)
            entry_id = fields.pop("id")
            event = parse_entry(entry_id, fields)
            assert isinstance(event, GenerationEvent)
            events.append(event)
        return events

    async def recent(self, count: int = 100, *, before: str | None = None) -> list[Event]:
        """The newest entries of the whole log, newest first; `before`: only those older than it."""
        newest = _before(before)
        if newest is None:
            return []  # nothing comes before 0-0
        entries = await self.redis.xrevrange(keys.EVENTS, max=newest, min="-", count=count)
        return [parse_entry(entry_id, fields) for entry_id, fields in entries]


# Redis stream ids are two unsigned 64-bit numbers.
_ID_MAX = 2**64 - 1


def _before(before: str | None) -> str | None:
    """XREVRANGE's `max` for the entries older than `before`; None when there can be none.

    Redis refuses an exclusive `(0-0` (nothing precedes it) and a part past 64 bits, which the
    query's pattern lets through: such an id would otherwise reach Redis and fail as a 500.
    """
    if not before:
        return "+"
    ms, _, seq = before.partition("-")
    millis, sequence = int(ms), int(seq or 0)
    if millis > _ID_MAX or (millis == _ID_MAX and sequence > _ID_MAX):
        return "+"  # later than any id Redis can hold: every entry is older
    if millis == 0 and sequence == 0:
        return None
    return f"({millis}-{min(sequence, _ID_MAX)}"
