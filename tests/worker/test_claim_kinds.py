"""The claim across web and official accounts, against a real Redis: kinds, prices, the rate window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from redis.asyncio import Redis

from shared import keys
from shared.accounts import AccountRegistry
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


def store_on(db: Redis) -> GenerationStore:
    return GenerationStore(db, retention_seconds=3600, default_generation_seconds=10)


async def account(db: Redis, name: str, available: int, **config: Any) -> None:
    if config.get("kind") == "official":
        config.setdefault("api_key", "k")
    else:
        config.setdefault("cookie", "t")
    await AccountRegistry(db).add(AccountConfig(name=name, base_url="http://x", **config))
    await db.hset(keys.account(name), "available", available)


async def enqueue(db: Redis, *creates: dict[str, Any], price: int = 40) -> list[str]:
    ids = []
    for n, fields in enumerate(creates):
        record = GenerationRecord.new("alice", CreateRequest(prompt=f"p{n}", **fields))
        record.price_cents = price
        await store_on(db).enqueue_new(record, max_depth=10_000)
        ids.append(record.id)
    return ids


async def claim_all(scheduler: Scheduler) -> list[str]:
    claimed = []
    while claim := await scheduler.claim():
        claimed.append(claim.account)
    return claimed


async def test_an_official_account_takes_no_more_than_its_balance_pays_for(db: Redis) -> None:
    """100 cents at 40 a create: two claims, 20 cents left; a release without a create gives 40 back."""
    await account(db, "api", 100, kind="official")
    scheduler = Scheduler(db, lease_seconds=60, store=store_on(db))
    ids = await enqueue(db, *[{"model": "ray-2"}] * 4)
    assert await claim_all(scheduler) == ["api", "api"]
    assert await db.hget(keys.account("api"), "available") == "20"
    await scheduler.release(ids[0], "api", restore_capacity=True)
    assert await db.hget(keys.account("api"), "available") == "60"
    assert await claim_all(scheduler) == ["api"]


async def test_creates_per_minute_bound_the_claims_until_the_window_moves(db: Redis) -> None:
    """3 a minute: the fourth waits; a claim handed back unused frees its place in the window."""
    await account(db, "api", 10_000, kind="official", creates_per_minute=3)
    scheduler = Scheduler(db, lease_seconds=60, store=store_on(db))
    ids = await enqueue(db, *[{}] * 5)
    assert await claim_all(scheduler) == ["api"] * 3
    await scheduler.release(ids[1], "api", restore_capacity=True)
    assert await claim_all(scheduler) == ["api"]
    old = await db.zrange(keys.create_window("api"), 0, -1)
    await db.zadd(keys.create_window("api"), dict.fromkeys(old, 1))  # a minute and more ago
    assert await claim_all(scheduler) == ["api"]


async def test_a_provider_and_an_extend_pin_decide_the_account(db: Redis) -> None:
    """provider web goes to the web account, official to the official one, a pin only to its account."""
    await account(db, "web", 100, max_concurrency=5)
    await account(db, "api", 10_000, kind="official", max_concurrency=5)
    await account(db, "api-2", 10_000, kind="official", max_concurrency=9)
    scheduler = Scheduler(db, lease_seconds=60, store=store_on(db))
    ids = await enqueue(db, {"provider": "web"}, {"model": "ray-flash-2"}, {})
    record = await store_on(db).get(ids[2])
    assert record is not None
    claimed = await claim_all(scheduler)
    assert claimed[0] == "web" and claimed[1] == "api-2"

    pinned = GenerationRecord.new("alice", CreateRequest(prompt="more", provider="official"))
    pinned.pin_account = "api"
    await store_on(db).enqueue_new(pinned, max_depth=10_000)
    [claim] = await claim_all(scheduler)
    assert claim == "api"


async def test_a_credit_reading_keeps_what_claims_reserved_out_of_available(db: Redis) -> None:
    """A /credits reading of 500 with a 40-cent claim in progress leaves 460 available."""
    await account(db, "api", 500, kind="official")
    scheduler = Scheduler(db, lease_seconds=60, store=store_on(db))
    await enqueue(db, {})
    assert await claim_all(scheduler) == ["api"]
    seen = await scheduler.usage_seq("api")
    reading = UpstreamUsage(available=500, capacity=None, consumed=None, raw={"credit_balance": 500})
    assert await scheduler.store_usage("api", seen, reading)
    assert await db.hget(keys.account("api"), "available") == "460"
    await enqueue(db, {})
    assert await claim_all(scheduler) == ["api"]  # its counter survived a reading without one
