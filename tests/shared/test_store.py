"""Queue places, wait estimates and the caller's view of a stored record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.accounts import AccountRegistry
from shared.models import CreateRequest, GenerationRecord, Phase
from shared.settings import AccountConfig
from shared.store import FinishedRecords, GenerationStore, QueueFull, views


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[GenerationStore]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield GenerationStore(client, retention_seconds=3600, default_generation_seconds=100)
    await client.aclose()


async def enqueue(store: GenerationStore, owner: str, count: int) -> list[GenerationRecord]:
    made = []
    for n in range(count):
        record = GenerationRecord.new(owner, CreateRequest(prompt=f"{owner} {n}"))
        await store.enqueue_new(record, max_depth=100)
        made.append(record)
    return made


async def test_positions_follow_the_round_robin_between_key_holders(store: GenerationStore) -> None:
    """alice submits 3 then bob 2: bob's first is 2nd in line, not 4th."""
    alice = await enqueue(store, "alice", 3)
    bob = await enqueue(store, "bob", 2)
    places = await store.places(alice + bob)
    assert [places[record.id].position for record in alice] == [1, 3, 5]
    assert [places[record.id].position for record in bob] == [2, 4]


async def test_a_full_queue_refuses_and_stores_nothing(store: GenerationStore) -> None:
    """At the depth limit enqueue raises QueueFull and leaves Redis exactly as it was."""
    await enqueue(store, "alice", 2)
    before = sorted(await store.redis.keys("*"))
    record = GenerationRecord.new("alice", CreateRequest(prompt="one too many"))
    with pytest.raises(QueueFull):
        await store.enqueue_new(record, max_depth=2)
    assert sorted(await store.redis.keys("*")) == before
    assert await store.get(record.id) is None


async def pool_of(store: GenerationStore, slots: dict[str, tuple[int, int]], seconds: float) -> None:
    """Active accounts name -> (max_concurrency, slots in use), and the measured run time."""
    registry = AccountRegistry(store.redis)
    for name, (limit, used) in slots.items():
        await registry.add(AccountConfig(name=name, cookie="t", base_url="http://x", max_concurrency=limit))
        far = int(time.time() * 1000) + 3_600_000
        for n in range(used):
            await store.redis.zadd(keys.leases(name), {f"{name}-busy-{n}": far})
    await store.redis.set(keys.GEN_SECONDS, seconds)


async def test_wait_estimate_counts_rounds_of_the_pool(store: GenerationStore) -> None:
    """3 free of 6 slots, 60 s a run: places 1-3 start now, 4-9 after one run, 10 after two."""
    await pool_of(store, {"a": (3, 3), "b": (3, 0)}, seconds=60)
    records = await enqueue(store, "alice", 10)
    places = await store.places(records)
    waits = {places[record.id].position: places[record.id].wait for record in records}
    assert [waits[position] for position in (1, 3, 4, 9, 10)] == [0.0, 0.0, 60.0, 60.0, 120.0]


async def test_no_active_account_means_no_estimate(store: GenerationStore) -> None:
    """With nothing that can run, the place is kept and the wait is unknown, not a made-up number."""
    [record] = await enqueue(store, "alice", 1)
    place = (await store.places([record]))[record.id]
    assert place.position == 1 and place.wait is None


async def test_a_generation_pinned_to_a_busy_account_waits_for_that_account(store: GenerationStore) -> None:
    """First in line, but the account holding its image has no slot free: one run, not zero."""
    await pool_of(store, {"holder": (1, 1), "other": (5, 0)}, seconds=30)
    image = "https://cdn.example/cat.png"
    await store.redis.set(keys.upload_account(image), "holder")
    record = GenerationRecord.new("alice", CreateRequest(prompt="pinned", image=image))
    await store.enqueue_new(record, max_depth=100)
    place = (await store.places([record]))[record.id]
    assert place.position == 1 and place.wait == 30.0


def test_view_keeps_upstream_fields_but_our_id_and_hides_a_video_until_completed() -> None:
    """Unknown upstream fields pass through; `id` is ours; no video is shown before completion."""
    record = GenerationRecord.new("alice", CreateRequest(prompt="fox"))
    record.phase = Phase.PROCESSING
    record.upstream = {
        "id": "upstream-1",
        "thumbnail": "t.jpg",
        "video": {"url": "v.mp4"},
        "state": "completed",
    }
    shown = record.view()
    assert shown["id"] == record.id
    assert shown["thumbnail"] == "t.jpg"
    assert shown["state"] == "processing"
    assert shown["video"] is None
    record.phase = Phase.COMPLETED
    assert record.view()["video"] == {"url": "v.mp4"}


async def test_a_generation_claimed_between_write_and_read_shows_no_wait(store: GenerationStore) -> None:
    """The create answer is built after a worker may already have taken it: wait 0, no place."""
    [record] = await enqueue(store, "alice", 1)
    await store.redis.zrem(keys.wait_queue(record.owner), record.id)  # what a claim does
    [shown] = views([record], await store.places([record]))
    assert shown["queue_position"] is None
    assert shown["estimate_wait_seconds"] == 0.0


async def test_finished_records_are_answered_from_memory_within_their_bounds(redis_url: str) -> None:
    """A finished record is read from Redis once, then from memory, within its entry and age
    bounds; a record still under way is read from Redis every time."""
    client = Redis.from_url(redis_url, decode_responses=True)
    finished = FinishedRecords(entries=2, seconds=0.5)
    cached = GenerationStore(
        client, retention_seconds=3600, default_generation_seconds=100, finished=finished
    )
    try:
        waiting, *ended = await enqueue(cached, "carol", 4)
        for record in ended:
            moved = await cached.transition(record.id, Phase.FAILED, failure_reason="cancelled")
            assert moved.ok
        for record in [waiting, *ended]:
            found = await cached.get(record.id)
            assert found is not None and found.id == record.id
        # Gone from Redis: only what memory kept still answers.
        await client.delete(*(keys.generation(record.id) for record in [waiting, *ended]))
        assert await cached.get(waiting.id) is None  # under way: never kept
        assert await cached.get(ended[0].id) is None  # the least recently read, past 2 entries
        kept = [await cached.get(record.id) for record in ended[1:]]
        assert [record.phase if record else None for record in kept] == [Phase.FAILED, Phase.FAILED]
        await asyncio.sleep(0.6)
        assert await cached.get(ended[2].id) is None  # past its age
    finally:
        await client.aclose()
