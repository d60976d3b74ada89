"""The live event stream: GET /api/generations/events, Server-Sent Events of a key holder's generations.

A reader of the event log like any other (shared/events.py): one task per api process tails the
log with one blocking XREAD and hands each generation event to the streams open for its owner, so
an idle stream costs nothing and a thousand open streams cost one Redis connection. A client that
reconnects with `Last-Event-ID` first gets what it missed from its holder's own stream (the last
HOLDER_EVENTS_MAX_LEN events), then the live tail; the event id is the log's entry id, so the two
never disagree. Heartbeat comments keep proxies from closing an idle stream.

Browsers cannot send headers with EventSource, so this route (only this one) also takes the key as
a `key` query parameter; the request log never records query strings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import orjson
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.events import GenerationEvent, parse_entry
from shared.settings import EVENT_LOG_BLOCK_SECONDS
from shared.store import GenerationStore, views

log = structlog.get_logger("api")

# How long one XREAD waits before it asks again: below every client's socket timeout (settings check).
BLOCK_MS = round(EVENT_LOG_BLOCK_SECONDS * 1000)
# Events a slow stream may lag behind before it is closed (it resumes with Last-Event-ID).
STREAM_BUFFER = 1000
REPLAY_PAGE = 500


# What a stream is handed: an event's id and its frame, rendered once for every stream of its owner.
Frame = tuple[str, bytes]


class EventHub:
    """Tails the event log once for this process and fans generation events out by owner."""

    def __init__(self, store: GenerationStore) -> None:
        self.store = store
        self.redis = store.redis
        self._streams: dict[str, set[asyncio.Queue[Frame | None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start tailing from the log's newest entry, found before the api serves anyone: an event
        of a stream opened right after start-up must not count as the past. (With Redis away at
        start-up the tail finds its place once Redis answers.)"""
        start: str | None = None
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            start = await self._newest()
        self._task = asyncio.create_task(self._tail(start), name="event-hub")

    async def _newest(self) -> str:
        newest = await self.redis.xrevrange(keys.EVENTS, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.end_streams()

    def end_streams(self) -> None:
        """End every open stream (its client reconnects with Last-Event-ID, to another api)."""
        for streams in self._streams.values():
            for queue in streams:
                if queue.full():
                    queue.get_nowait()  # a full queue still takes the end; the client resumes
                queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self, owner: str) -> Iterator[asyncio.Queue[Frame | None]]:
        queue: asyncio.Queue[Frame | None] = asyncio.Queue(STREAM_BUFFER)
        self._streams[owner].add(queue)
        try:
            yield queue
        finally:
            self._streams[owner].discard(queue)
            if not self._streams[owner]:
                del self._streams[owner]

    @property
    def open_streams(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    async def _tail(self, last: str | None) -> None:
        failures = 0
        while True:
            try:
                if last is None:
                    # From what happens next on: a stream's past comes from its owner's stream.
                    last = await self._newest()
                answer = await self.redis.xread({keys.EVENTS: last}, block=BLOCK_MS, count=1000)
                events = []
                for _, entries in answer or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        if fields.get("kind") == "generation" and fields.get("owner") in self._streams:
                            event = parse_entry(entry_id, fields)
                            assert isinstance(event, GenerationEvent)
                            events.append(event)
                if events:
                    for owner, frame in await render(self.store, events):
                        self._deliver(owner, frame)
                if failures:
                    log.info("redis is back", after_failures=failures)
                failures = 0
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                failures += 1
                backoff = min(5.0, 0.1 * 2**failures)
                # One line per step of the backoff: the api keeps serving (503 where Redis is
                # needed) and says when it looks again.
                log.warning(
                    "redis unavailable; the api answers 503 redis_unavailable until it is back",
                    error=str(error),
                    retry_in_seconds=backoff,
                )
                await asyncio.sleep(backoff)

    def _deliver(self, owner: str, frame: Frame) -> None:
        for queue in list(self._streams.get(owner, ())):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                # Too far behind: end that stream; its client resumes from its Last-Event-ID.
                self._streams[owner].discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                queue.put_nowait(None)


async def render(store: GenerationStore, events: list[GenerationEvent]) -> list[tuple[str, Frame]]:
    """Each event's frame: the generation as the detail shows it now (one read for all of them)."""
    records = {record.id: record for record in await store.get_many([e.generation_id for e in events])}
    shown = {
        view["id"]: view for view in views(list(records.values()), await store.places(list(records.values())))
    }
    frames = []
    for event in events:
        view = shown.get(event.generation_id)
        if view is not None:
            data = orjson.dumps(view)
            frames.append(
                (
                    event.owner,
                    (event.id, b"id: %s\nevent: generation\ndata: %s\n\n" % (event.id.encode(), data)),
                )
            )
    return frames


async def missed(redis: Redis, owner: str, after: str) -> AsyncIterator[list[GenerationEvent]]:
    """The owner's events after `after` (exclusive), oldest first, a page at a time, from its own stream."""
    start = f"({after}"
    while True:
        entries = await redis.xrange(keys.owner_events(owner), min=start, max="+", count=REPLAY_PAGE)
        page = [parse_entry(entry_id, fields) for entry_id, fields in entries]
        yield [event for event in page if isinstance(event, GenerationEvent)]
        if len(entries) < REPLAY_PAGE:
            return
        start = f"({entries[-1][0]}"


async def stream(
    request: web.Request,
    hub: EventHub,
    store: GenerationStore,
    owner: str,
    *,
    last_event_id: str | None,
    heartbeat_seconds: float,
) -> web.StreamResponse:
    """Serve one client: what it missed, then the live tail, with heartbeats, until it leaves."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass events on as they come
        }
    )
    await response.prepare(request)
    sent = last_event_id or "0-0"
    with hub.subscribe(owner) as live, contextlib.suppress(ConnectionResetError):
        # Subscribed before the replay, so nothing falls between the two; ids already sent are skipped.
        await response.write(b": connected\n\n")
        if last_event_id:
            async for page in missed(store.redis, owner, last_event_id):
                for _, (entry_id, frame) in await render(store, page):
                    await response.write(frame)
                    sent = entry_id
        while True:
            try:
                item = await asyncio.wait_for(live.get(), timeout=heartbeat_seconds)
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            if item is None:
                break
            entry_id, frame = item
            if _newer(entry_id, sent):
                await response.write(frame)
                sent = entry_id
    return response


def _newer(entry_id: str, than: str) -> bool:
    ms, _, seq = entry_id.partition("-")
    other_ms, _, other_seq = than.partition("-")
    return (int(ms), int(seq or 0)) > (int(other_ms), int(other_seq or 0))
