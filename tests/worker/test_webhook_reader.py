"""The one reader of the log for webhooks: what a dead holder read is read again, once, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.models import CreateRequest, GenerationRecord
from shared.states import Phase
from shared.store import GenerationStore
from shared.webhooks import WebhookStore
from worker.webhooks import LogReader


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield redis
    await redis.aclose()


async def run_to_the_end(client: Redis, callback_url: str | None = "https://example.com/hook") -> str:
    """A generation taken through the door from waiting to completed: five entries in the log."""
    store = GenerationStore(client, retention_seconds=3600, default_generation_seconds=1)
    record = GenerationRecord.new("alice", CreateRequest(prompt="read me", callback_url=callback_url))
    await store.enqueue_new(record, max_depth=10)
    for phase in (Phase.CLAIMED, Phase.SUBMITTING, Phase.PROCESSING, Phase.COMPLETED):
        assert (await store.transition(record.id, phase, account="sim-1")).ok
    return record.id


async def drain(reader: LogReader) -> None:
    """Step until the reader has read everything there is (its blocking read then finds nothing)."""
    for _ in range(10):
        await reader.step()
        pending = await reader.redis.xpending(keys.EVENTS, keys.WEBHOOK_GROUP)
        if reader.cursor == ">" and pending["pending"] == 0:
            return
    raise AssertionError("the reader did not catch up")


async def test_a_dead_holders_unacknowledged_entries_become_deliveries_once_in_order(client: Redis) -> None:
    """Entries read and never acknowledged (the holder died) are read by the next holder from 0."""
    gen_id = await run_to_the_end(client)
    await run_to_the_end(client, callback_url=None)  # no callback: nothing to send for it
    # The dead holder: read everything as the group's consumer, acknowledged nothing, lock lapsed.
    await client.xgroup_create(keys.EVENTS, keys.WEBHOOK_GROUP, id="0")
    await client.xreadgroup(keys.WEBHOOK_GROUP, keys.WEBHOOK_GROUP, {keys.EVENTS: ">"}, count=1000)

    reader = LogReader(client, WebhookStore(client, retention_seconds=3600))
    await drain(reader)
    webhooks = WebhookStore(client, retention_seconds=3600)
    shown = [delivery.type for delivery, _ in await webhooks.deliveries(gen_id)]
    assert shown == ["generation.processing", "generation.completed"]

    # Read the whole log once more (as after a crash right before the acknowledgement): no new delivery.
    await client.xgroup_setid(keys.EVENTS, keys.WEBHOOK_GROUP, id="0")
    await drain(reader)
    assert [delivery.type for delivery, _ in await webhooks.deliveries(gen_id)] == shown
    assert await client.llen(keys.webhook_queue(gen_id)) == 2


async def test_while_one_worker_holds_the_log_another_reads_nothing(client: Redis) -> None:
    """One reader at a time: the second waits for the lock and leaves the entries to the first."""
    gen_id = await run_to_the_end(client)
    first = LogReader(client, WebhookStore(client, retention_seconds=3600))
    second = LogReader(client, WebhookStore(client, retention_seconds=3600))
    await first.step()  # takes the lock, creates the group
    assert await second.step() > 0, "the second pauses"
    assert await client.get(keys.WEBHOOK_READER_LOCK) == first.holder
    await drain(first)
    assert await client.llen(keys.webhook_queue(gen_id)) == 2

    await first.release()
    await second.step()
    assert await client.get(keys.WEBHOOK_READER_LOCK) == second.holder
