"""GET /api/generations/usage: the seed's usage shape summed over the pool, from Redis alone."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis_asyncio

from shared import keys
from shared.accounts import AccountRegistry
from tests.api.conftest import ADMIN_KEY, KEY_A, ApiClient, MakeApi, account, auth

PLANS = [
    {
        "name": "Standard",
        "key": "standard",
        "capacity_per_month": 150,
        "monthly_cost_in_cents": 2999.0,
        "yearly_cost_in_cents": 28788.0,
    }
]


async def cache_usage(redis: redis_asyncio.Redis, name: str, consumed: int, capacity: int, plan: str) -> None:
    """What a worker's usage refresh leaves in the account's hash."""
    usage = {
        "consumed": consumed,
        "capacity": capacity,
        "available": capacity - consumed,
        "subscription": {"active": True, "plan": plan, "type": "monthly"},
        "plans": PLANS,
    }
    await redis.hset(
        keys.account(name),
        mapping={
            "consumed": consumed,
            "capacity": capacity,
            "available": capacity - consumed,
            "usage": json.dumps(usage),
        },
    )


async def usage_of(api: ApiClient, key: str) -> dict[str, Any]:
    response = await api.get("/api/generations/usage", headers=auth(key))
    assert response.status == 200, await response.text()
    data: dict[str, Any] = (await response.json())["data"]
    return data


async def test_usage_sums_the_enabled_accounts_in_the_seed_shape(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """consumed/capacity/available add up over accounts not disabled; plan and plans come along."""
    for name in ("a", "b", "off", "fresh"):
        await registry.add(account(name))
    await cache_usage(redis, "a", consumed=10, capacity=150, plan="standard")
    await cache_usage(redis, "b", consumed=30, capacity=430, plan="pro")
    await cache_usage(redis, "off", consumed=1, capacity=1000, plan="premier")
    await registry.update("off", enabled=False)

    usage = await usage_of(api, KEY_A)

    assert usage["consumed"] == 40
    assert usage["capacity"] == 580
    assert usage["available"] == 540
    assert usage["subscription"] == {"active": True, "plan": "standard", "type": "monthly"}
    assert usage["plans"] == PLANS
    assert "accounts" not in usage


async def test_usage_before_any_refresh_shows_an_inactive_subscription(
    api: ApiClient, registry: AccountRegistry
) -> None:
    """With nothing cached yet the numbers are 0 and the subscription is inactive, not an error."""
    await registry.add(account("new"))

    usage = await usage_of(api, KEY_A)

    assert usage == {
        "consumed": 0,
        "capacity": 0,
        "available": 0,
        "subscription": {"active": False, "plan": None, "type": None},
        "plans": [],
    }


async def test_the_admin_key_adds_one_row_per_account_without_cookies(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """ADMIN_KEY on usage adds `accounts`: name, state, load, usage; never a cookie."""
    await registry.add(account("a", max_concurrency=4))
    await registry.add(account("b"))
    await cache_usage(redis, "a", consumed=10, capacity=150, plan="standard")

    response = await api.get("/api/generations/usage", headers=auth(ADMIN_KEY))

    assert response.status == 200
    text = await response.text()
    assert "cookie-of-" not in text
    rows = {row["name"]: row for row in (await response.json())["data"]["accounts"]}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["state"] == "active"
    assert rows["a"]["limit"] == 4 and rows["a"]["in_flight"] == 0
    assert rows["a"]["available"] == 140
    assert rows["b"]["available"] is None


async def test_an_open_api_still_keeps_account_rows_for_the_admin_key(
    make_api: MakeApi, registry: AccountRegistry
) -> None:
    """Without SECRET_KEY anyone reads usage, but only the ADMIN_KEY bearer sees the accounts."""
    api = await make_api(secret_key=[])
    await registry.add(account("a"))

    assert "accounts" not in await usage_of(api, "anything")
    assert [row["name"] for row in (await usage_of(api, ADMIN_KEY))["accounts"]] == ["a"]
