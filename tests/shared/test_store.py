"""Queue places, wait estimates and the caller's view of a stored record."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.models import CreateRequest, GenerationRecord, Phase
from shared.store import GenerationStore, PoolSnapshot, QueueFull, views


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[GenerationStore]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield GenerationStore(client, retention_seconds=3600, default_generation_seconds=100)
    await client.aclose()


async def enqueue(store: GenerationStore, owner: str, count: int) -> list[GenerationRecord]:
    made = []
    for n in range(count):
        record = GenerationRecord.new(owner, CreateRequest(prompt=f"{owner} {n}"))
        await store.enqueue_new(record, max_depth=100, pin=None)
        made.append(record)
    return made


async def test_positions_follow_the_round_robin_between_key_holders(store: GenerationStore) -> None:
    """alice submits 3 then bob 2: bob's first is 2nd in line, not 4th."""
    alice = await enqueue(store, "alice", 3)
    bob = await enqueue(store, "bob", 2)
    positions = await store.waiting_positions(alice + bob)
    assert [positions[record.id] for record in alice] == [1, 3, 5]
    assert [positions[record.id] for record in bob] == [2, 4]


async def test_a_full_queue_refuses_and_stores_nothing(store: GenerationStore) -> None:
    """At the depth limit enqueue raises QueueFull and leaves Redis exactly as it was."""
    await enqueue(store, "alice", 2)
    before = sorted(await store.redis.keys("*"))
    record = GenerationRecord.new("alice", CreateRequest(prompt="one too many"))
    with pytest.raises(QueueFull):
        await store.enqueue_new(record, max_depth=2, pin=None)
    assert sorted(await store.redis.keys("*")) == before
    assert await store.get(record.id) is None


@pytest.mark.parametrize(
    ("position", "expected"),
    [(1, 0.0), (3, 0.0), (4, 60.0), (9, 60.0), (10, 120.0)],
)
def test_wait_estimate_counts_rounds_of_the_pool(position: int, expected: float) -> None:
    """3 free of 6 slots, 60 s a run: places 1-3 start now, 4-9 after one run, 10 after two."""
    pool = PoolSnapshot(total_slots=6, free_slots=3, generation_seconds=60)
    assert GenerationStore.estimate_wait(position, pool) == expected


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
    positions = await store.waiting_positions([record])
    pool = PoolSnapshot(total_slots=3, free_slots=2, generation_seconds=60)
    [shown] = views([record], positions, pool)
    assert shown["queue_position"] is None
    assert shown["estimate_wait_seconds"] == 0.0
