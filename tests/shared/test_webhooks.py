"""Deliveries in Redis: queued once per event, only a generation's head sent, retries, leases, redelivery."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.webhooks import Delivery, Taken, WebhookStore, delivery_view, new_secret, webhook_id

SCHEDULE = [30.0, 60.0]
LEASE_SECONDS = 60.0


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[WebhookStore]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield WebhookStore(client, retention_seconds=3600)
    await client.aclose()


def delivery(entry: str, gen_id: str = "gen-1", kind: str = "generation.processing") -> Delivery:
    return Delivery.model_validate(
        {
            "webhook_id": webhook_id(entry),
            "generation_id": gen_id,
            "owner": "alice",
            "type": kind,
            "timestamp": "2024-12-04T01:20:00.123Z",
            "url": "https://example.com/hook",
            "body": f'{{"type":"{kind}"}}',
        }
    )


async def redis_ms(store: WebhookStore) -> int:
    """Redis's clock, which the schedule is counted on."""
    seconds, micros = await store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def take_one(store: WebhookStore, lease_seconds: float = LEASE_SECONDS) -> Taken:
    [taken] = await store.take_due(lease_seconds=lease_seconds, count=10)
    return taken


async def test_an_event_read_twice_is_queued_once(store: WebhookStore) -> None:
    """The reader may see an entry again after a crash: the second enqueue changes nothing."""
    assert await store.enqueue(delivery("1-0")) is True
    assert await store.enqueue(delivery("1-0")) is False
    assert await store.redis.lrange(keys.webhook_queue("gen-1"), 0, -1) == ["msg_1-0"]
    assert await store.redis.lrange(keys.webhook_deliveries("gen-1"), 0, -1) == ["msg_1-0"]


async def test_only_the_head_of_a_generations_queue_is_sent(store: WebhookStore) -> None:
    """completed waits behind processing; delivering processing makes completed due at once."""
    await store.enqueue(delivery("1-0"))
    await store.enqueue(delivery("2-0", kind="generation.completed"))
    taken = await take_one(store)
    assert taken.webhook_id == "msg_1-0"
    assert await store.take_due(lease_seconds=LEASE_SECONDS, count=10) == [], "held under its lease"

    recorded = await store.record_attempt(taken, sent_at_ms=1, status=204, error=None, schedule=SCHEDULE)
    assert (recorded.outcome, recorded.attempt, recorded.superseded) == ("delivered", 1, False)
    assert (await take_one(store)).webhook_id == "msg_2-0"


async def test_a_failure_waits_for_the_next_step_of_the_schedule_then_gives_up(store: WebhookStore) -> None:
    """Attempt 1 fails: due again after 30 s; attempt 2 after 60 s; attempt 3 fails: given up, reason kept."""
    await store.enqueue(delivery("1-0"))
    await store.enqueue(delivery("2-0", kind="generation.failed"))
    taken = await take_one(store)
    before = await redis_ms(store)
    first = await store.record_attempt(taken, sent_at_ms=1, status=500, error=None, schedule=SCHEDULE)
    assert first.outcome == "failed" and first.next_at is not None
    assert before + 30_000 <= first.next_at <= await redis_ms(store) + 30_000
    [(_, due_ms)] = await store.redis.zrange(keys.WEBHOOK_DUE, 0, 0, withscores=True)
    assert due_ms == first.next_at
    assert await store.take_due(lease_seconds=LEASE_SECONDS, count=10) == [], "not before its time"

    # Bring the retries forward instead of waiting for them: the schedule is what is under test.
    await store.redis.zadd(keys.WEBHOOK_DUE, {"gen-1": 0})
    taken = await take_one(store)
    before = await redis_ms(store)
    second = await store.record_attempt(taken, sent_at_ms=2, status=None, error="refused", schedule=SCHEDULE)
    assert second.outcome == "failed" and second.next_at is not None
    assert before + 60_000 <= second.next_at <= await redis_ms(store) + 60_000
    await store.redis.zadd(keys.WEBHOOK_DUE, {"gen-1": 0})
    third = await store.record_attempt(
        await take_one(store), sent_at_ms=3, status=None, error="no answer within 10 s", schedule=SCHEDULE
    )
    assert (third.outcome, third.attempt) == ("given_up", 3)

    [(given_up, attempts), (behind, _)] = await store.deliveries("gen-1")
    assert given_up.state == "given_up" and given_up.reason == "no answer within 10 s"
    assert [(a.attempt, a.status, a.error, a.outcome) for a in attempts] == [
        (1, 500, None, "failed"),
        (2, None, "refused", "failed"),
        (3, None, "no answer within 10 s", "given_up"),
    ]
    assert behind.state == "pending"
    assert (await take_one(store)).webhook_id == "msg_2-0", "the next event goes once this one is given up"


async def test_a_late_answer_under_an_expired_lease_is_kept_but_moves_nothing(store: WebhookStore) -> None:
    """A sender that outlived its lease records its attempt; the new holder's outcome is what counts."""
    await store.enqueue(delivery("1-0"))
    stale = await take_one(store, lease_seconds=0)  # a lease that has run out at once
    fresh = await take_one(store)
    assert fresh.lease > stale.lease

    late = await store.record_attempt(stale, sent_at_ms=1, status=200, error=None, schedule=SCHEDULE)
    assert late.superseded and late.outcome == "delivered"
    assert await store.redis.lrange(keys.webhook_queue("gen-1"), 0, -1) == ["msg_1-0"]

    recorded = await store.record_attempt(fresh, sent_at_ms=2, status=500, error=None, schedule=SCHEDULE)
    assert (recorded.outcome, recorded.attempt, recorded.superseded) == ("failed", 2, False)


async def test_redeliver_sends_every_event_again_in_order_with_a_fresh_schedule(store: WebhookStore) -> None:
    """After both are delivered, a redelivery queues both again; attempt numbers carry on."""
    await store.enqueue(delivery("1-0"))
    await store.enqueue(delivery("2-0", kind="generation.completed"))
    for _ in range(2):
        await store.record_attempt(
            await take_one(store), sent_at_ms=1, status=200, error=None, schedule=SCHEDULE
        )
    assert await store.take_due(lease_seconds=LEASE_SECONDS, count=10) == []

    assert await store.redeliver("gen-1") == 2
    assert await store.redis.lrange(keys.webhook_queue("gen-1"), 0, -1) == ["msg_1-0", "msg_2-0"]
    taken = await take_one(store)
    assert taken.webhook_id == "msg_1-0"
    again = await store.record_attempt(taken, sent_at_ms=5, status=200, error=None, schedule=SCHEDULE)
    assert again.attempt == 2
    views = [delivery_view(*item) for item in await store.deliveries("gen-1")]
    assert [(view["type"], view["state"]) for view in views] == [
        ("generation.processing", "delivered"),
        ("generation.completed", "pending"),
    ]
    assert [attempt["attempt"] for attempt in views[0]["attempts"]] == [1, 2]
    assert await store.redeliver("no-such-generation") == 0


async def test_a_secret_is_made_once_per_holder_and_a_rotation_replaces_it(store: WebhookStore) -> None:
    """whsec_ and 32 random bytes; the same on every read; another holder's differs; rotate changes it."""
    first = await store.secret("alice")
    assert first.startswith("whsec_") and len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert await store.secret("alice") == first
    assert await store.secret("bob") != first
    rotated = await store.rotate_secret("alice")
    assert rotated != first and await store.secret("alice") == rotated
    assert new_secret() != new_secret()
