"""The claim and its companions, against a real Redis: limits, capacity, pins, fairness, order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.accounts import AccountRegistry, AccountState
from shared.models import CreateRequest, GenerationRecord
from shared.settings import AccountConfig
from shared.store import GenerationStore
from worker.scheduler import Scheduler
from worker.upstream.models import UpstreamUsage


@pytest_asyncio.fixture
async def db(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def pool(db: Redis, accounts: dict[str, tuple[int, int]]) -> Scheduler:
    """Accounts name -> (max_concurrency, available), as a usage refresh would leave them."""
    registry = AccountRegistry(db)
    for name, (limit, available) in accounts.items():
        await registry.add(AccountConfig(name=name, cookie="t", base_url="http://x", max_concurrency=limit))
        await db.hset(keys.account(name), "available", available)
    return Scheduler(db, lease_seconds=60, store=store_on(db))


def store_on(db: Redis) -> GenerationStore:
    return GenerationStore(db, retention_seconds=3600, default_generation_seconds=10)


async def enqueue(db: Redis, owner: str, count: int, pin: str | None = None) -> list[str]:
    """`count` generations of `owner`; `pin`: each uses an image we uploaded to that account."""
    store = store_on(db)
    ids = []
    for n in range(count):
        image = f"https://cdn.example/{owner}-{n}.png" if pin else None
        if image and pin:
            await db.set(keys.upload_account(image), pin)
        record = GenerationRecord.new(owner, CreateRequest(prompt=f"{owner} {n}", image=image))
        await store.enqueue_new(record, max_depth=10_000)
        ids.append(record.id)
    return ids


async def claim_all(scheduler: Scheduler) -> list[tuple[str, str]]:
    claimed = []
    while claim := await scheduler.claim():
        claimed.append((claim.gen_id, claim.account))
    return claimed


async def test_claims_stop_at_each_accounts_limit(db: Redis) -> None:
    """Two accounts with limits 1 and 2 take exactly three generations between them."""
    scheduler = await pool(db, {"a": (1, 100), "b": (2, 100)})
    await enqueue(db, "alice", 10)
    claimed = await claim_all(scheduler)
    assert sorted(account for _, account in claimed) == ["a", "b", "b"]
    assert await db.zcard(keys.WAIT_ALL) == 7


async def test_the_account_with_most_free_slots_is_chosen_first(db: Redis) -> None:
    """With 1 and 3 free slots, the first claim goes to the roomier account."""
    scheduler = await pool(db, {"small": (1, 100), "big": (3, 100)})
    await enqueue(db, "alice", 1)
    [(_, account)] = await claim_all(scheduler)
    assert account == "big"


async def test_no_claim_beyond_an_accounts_available_capacity(db: Redis) -> None:
    """Capacity is reserved at claim time: two units left means two claims, whatever the slots."""
    scheduler = await pool(db, {"a": (5, 2)})
    await enqueue(db, "alice", 4)
    assert len(await claim_all(scheduler)) == 2
    assert await db.hmget(keys.account("a"), ["available", "consumed"]) == ["0", "2"]


async def test_unhealthy_accounts_take_no_work(db: Redis) -> None:
    """Expired accounts and accounts with an open breaker are skipped; healthy ones serve."""
    scheduler = await pool(db, {"expired": (3, 100), "broken": (3, 100), "fine": (1, 100)})
    await AccountRegistry(db).mark("expired", AccountState.EXPIRED, "401")
    await db.hset(keys.account("broken"), "breaker_until", 2**50)
    await enqueue(db, "alice", 3)
    assert [account for _, account in await claim_all(scheduler)] == ["fine"]


async def test_one_holder_is_served_in_submission_order_and_holders_take_turns(db: Redis) -> None:
    """FIFO within a key holder, round-robin between holders."""
    scheduler = await pool(db, {"a": (100, 1000)})
    alice = await enqueue(db, "alice", 4)
    bob = await enqueue(db, "bob", 2)
    order = [gen_id for gen_id, _ in await claim_all(scheduler)]
    assert order == [alice[0], bob[0], alice[1], bob[1], alice[2], alice[3]]


async def test_a_pinned_generation_waits_for_its_account_while_that_account_is_healthy(db: Redis) -> None:
    """The image's account is full: the pinned head waits, another holder's work still starts."""
    scheduler = await pool(db, {"holder": (1, 100), "other": (5, 100)})
    [busy] = await enqueue(db, "carol", 1, pin="holder")
    assert await claim_all(scheduler) == [(busy, "holder")]
    [pinned] = await enqueue(db, "alice", 1, pin="holder")
    [free] = await enqueue(db, "bob", 1)
    assert await claim_all(scheduler) == [(free, "other")]
    await scheduler.release(busy, "holder", restore_capacity=False)
    assert await claim_all(scheduler) == [(pinned, "holder")]


async def test_a_pinned_generation_runs_elsewhere_when_its_account_cannot_serve(db: Redis) -> None:
    """An expired image account does not strand the generation: the public URL works anywhere."""
    scheduler = await pool(db, {"holder": (1, 100), "other": (1, 100)})
    await AccountRegistry(db).mark("holder", AccountState.EXPIRED, "401")
    [pinned] = await enqueue(db, "alice", 1, pin="holder")
    assert await claim_all(scheduler) == [(pinned, "other")]


async def test_requeue_front_gives_back_slot_and_capacity_and_keeps_the_place(db: Redis) -> None:
    """A claim handed back is its holder's next generation again, and its reservation is undone."""
    scheduler = await pool(db, {"a": (1, 10)})
    first, second = await enqueue(db, "alice", 2)
    assert await claim_all(scheduler) == [(first, "a")]
    await scheduler.requeue_front(first, "alice", "a", pin=None, restore_capacity=True)
    assert await db.hget(keys.account("a"), "available") == "10"
    assert await db.zcard(keys.leases("a")) == 0
    assert await claim_all(scheduler) == [(first, "a")]
    assert await db.zrange(keys.wait_queue("alice"), 0, -1) == [second]


async def test_expired_leases_free_their_slots(db: Redis) -> None:
    """A lease its holder stopped renewing no longer counts against the limit."""
    scheduler = await pool(db, {"a": (1, 10)})
    first, second = await enqueue(db, "alice", 2)
    assert await claim_all(scheduler) == [(first, "a")]
    await db.zadd(keys.leases("a"), {first: 1})  # expired long ago
    assert await claim_all(scheduler) == [(second, "a")]


async def test_a_usage_reading_taken_during_a_claim_is_not_stored(db: Redis) -> None:
    """The usage compare-and-set refuses a reading older than the latest claim."""
    scheduler = await pool(db, {"a": (3, 10)})
    seen = await scheduler.usage_seq("a")
    await enqueue(db, "alice", 1)
    await claim_all(scheduler)
    stale = UpstreamUsage(available=10, capacity=150, consumed=140, raw={})
    assert not await scheduler.store_usage("a", seen, stale)
    assert await db.hget(keys.account("a"), "available") == "9"
    fresh_seen = await scheduler.usage_seq("a")
    assert await scheduler.store_usage("a", fresh_seen, stale)
    # One claim has not reached the upstream yet, so one unit stays reserved.
    assert await db.hmget(keys.account("a"), ["available", "consumed"]) == ["9", "141"]
