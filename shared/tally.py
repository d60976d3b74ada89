"""Counters of what happened to generations, folded from the event log at scrape time.

The metrics of outcomes (generations accepted, finished by state and failure reason, and how long
each took from create to its end) are a reader of the event log like the webhooks and the live
stream: nothing that changes a generation's state knows about them. Each scrape reads the entries
written since the last one folded (the cursor), adds them to counters kept in Redis and moves
the cursor, in one MULTI under WATCH: two api processes scraping at once cannot count an entry
twice (the second one's EXEC fails and it reports what the first folded), and a restart of any
process loses nothing, because the counters live in Redis rather than in a process.

A scrape folds at most MAX_ENTRIES_PER_SCRAPE entries, so the first scrape of a gateway with a
long history does not stall: it catches up over the next few scrapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import WatchError

from shared import keys
from shared.events import GenerationEvent, parse_entry
from shared.states import TERMINAL_PHASES
from shared.store import GenerationStore

CHUNK = 1000
MAX_ENTRIES_PER_SCRAPE = 20_000
# Create to completed or failed, in seconds: from a fast simulator run to a long Luma queue.
DURATION_BUCKETS: tuple[float, ...] = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, math.inf)

ACCEPTED = "accepted"
FINISHED = "finished:"  # finished:{state}:{reason}
SECONDS_BUCKET = (
    "seconds_le:"  # seconds_le:{bound}: ends that took at most bound (and more than the one below)
)
SECONDS_SUM = "seconds_sum"
SECONDS_COUNT = "seconds_count"


def _bound_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


@dataclass
class Tally:
    """The counters as the last fold left them."""

    accepted: int = 0
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, reason) -> count
    # Cumulative, as Prometheus wants them: (le label, ends that took at most that long).
    duration_buckets: list[tuple[str, int]] = field(default_factory=list)
    duration_sum: float = 0.0
    duration_count: int = 0


class EventTally:
    def __init__(self, redis: Redis, store: GenerationStore) -> None:
        self.redis = redis
        self.store = store

    async def read(self) -> Tally:
        """Fold what the log gained since the last fold, then the counters."""
        folded = 0
        while folded < MAX_ENTRIES_PER_SCRAPE:
            count = await self._fold_once()
            folded += count
            if count < CHUNK:
                break
        return await self._counters()

    async def _fold_once(self) -> int:
        """Fold up to CHUNK entries after the cursor; how many were read (0: none, or lost a race)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.METRICS_CURSOR)
                cursor = await pipe.get(keys.METRICS_CURSOR)
                start = f"({cursor}" if cursor else "-"
                entries = await pipe.xrange(keys.EVENTS, min=start, max="+", count=CHUNK)
                if not entries:
                    return 0
                increments, seconds = await self._increments(entries)
                pipe.multi()  # type: ignore[no-untyped-call]
                for name, amount in increments.items():
                    pipe.hincrby(keys.METRICS_TALLY, name, amount)
                if seconds:
                    pipe.hincrbyfloat(keys.METRICS_TALLY, SECONDS_SUM, seconds)
                pipe.set(keys.METRICS_CURSOR, entries[-1][0])
                await pipe.execute()
            except WatchError:
                return 0  # another process folded these: its counters are the ones to read
        return len(entries)

    async def _increments(self, entries: list[tuple[str, dict[str, str]]]) -> tuple[dict[str, int], float]:
        increments: dict[str, int] = {}
        ended: list[GenerationEvent] = []
        for entry_id, fields in entries:
            event = parse_entry(entry_id, fields)
            if not isinstance(event, GenerationEvent):
                continue
            if event.from_phase is None:
                increments[ACCEPTED] = increments.get(ACCEPTED, 0) + 1
            if event.to_phase in TERMINAL_PHASES and event.from_phase not in TERMINAL_PHASES:
                name = f"{FINISHED}{event.state}:{event.failure_reason or ''}"
                increments[name] = increments.get(name, 0) + 1
                ended.append(event)
        total_seconds = 0.0
        # The create time is on the record, not in the terminal event; a record already past its
        # retention is counted as finished but not timed.
        records = {
            record.id: record for record in await self.store.get_many([e.generation_id for e in ended])
        }
        for event in ended:
            record = records.get(event.generation_id)
            if record is None:
                continue
            seconds = max(0.0, event.at / 1000 - record.created_ts)
            bound = next(bound for bound in DURATION_BUCKETS if seconds <= bound)
            name = SECONDS_BUCKET + _bound_label(bound)
            increments[name] = increments.get(name, 0) + 1
            increments[SECONDS_COUNT] = increments.get(SECONDS_COUNT, 0) + 1
            total_seconds += seconds
        return increments, total_seconds

    async def _counters(self) -> Tally:
        raw: dict[str, str] = await self.redis.hgetall(keys.METRICS_TALLY)
        tally = Tally(
            accepted=int(raw.get(ACCEPTED, 0)),
            duration_sum=float(raw.get(SECONDS_SUM, 0.0)),
            duration_count=int(raw.get(SECONDS_COUNT, 0)),
        )
        for name, value in raw.items():
            if name.startswith(FINISHED):
                state, _, reason = name.removeprefix(FINISHED).partition(":")
                tally.finished[(state, reason)] = int(value)
        running = 0
        for bound in DURATION_BUCKETS:
            label = _bound_label(bound)
            running += int(raw.get(SECONDS_BUCKET + label, 0))
            tally.duration_buckets.append((label, running))
        return tally
