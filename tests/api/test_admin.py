"""The admin API: add, list and change accounts at run time; a cookie goes in and never comes out."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from aiohttp import ClientResponse

from api.appkeys import SETTINGS
from shared import keys
from shared.accounts import AccountRegistry, AccountState
from shared.states import Phase
from shared.store import GenerationStore
from tests.api.conftest import ADMIN_KEY, KEY_A, ApiClient, MakeApi, account, auth, redis_state
from worker.scheduler import Scheduler

COOKIE = "access_token=admin-added-secret-cookie"
NEW_COOKIE = "access_token=the-rotated-secret-cookie"


async def data(response: ClientResponse, status: int = 200) -> Any:
    text = await response.text()
    assert response.status == status, text
    assert "secret-cookie" not in text  # no answer ever carries a cookie
    return (await response.json())["data"]


async def test_admin_adds_lists_and_changes_accounts_without_showing_cookies(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """Add (201), list, disable, enable, new cookie, new limits: every answer is a view with no cookie."""
    api = await make_api(luma_base_url="https://luma.example.test/")
    admin = auth(ADMIN_KEY)

    added = await data(
        await api.post(
            "/api/admin/accounts",
            json={"name": "main", "cookie": COOKIE, "max_concurrency": 2},
            headers=admin,
        ),
        201,
    )
    assert added["name"] == "main" and added["state"] == "active" and added["limit"] == 2
    assert added["base_url"] == "https://luma.example.test"
    assert await redis.hget(keys.account("main"), "cookie") == COOKIE.encode()

    [listed] = await data(await api.get("/api/admin/accounts", headers=admin))
    assert listed == added

    disabled = await data(await api.patch("/api/admin/accounts/main", json={"enabled": False}, headers=admin))
    assert disabled["state"] == "disabled"
    enabled = await data(await api.patch("/api/admin/accounts/main", json={"enabled": True}, headers=admin))
    assert enabled["state"] == "active"

    limits = await data(
        await api.patch(
            "/api/admin/accounts/main", json={"max_concurrency": 5, "max_queue": 7}, headers=admin
        )
    )
    assert limits["limit"] == 5 and limits["max_queue"] == 7
    cleared = await data(await api.patch("/api/admin/accounts/main", json={"max_queue": None}, headers=admin))
    assert cleared["max_queue"] is None and cleared["limit"] == 5

    await data(await api.patch("/api/admin/accounts/main", json={"cookie": NEW_COOKIE}, headers=admin))
    assert await redis.hget(keys.account("main"), "cookie") == NEW_COOKIE.encode()


async def test_a_new_cookie_revives_an_expired_account(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """An account the upstream refused (401) is active again once an operator gives it a new cookie."""
    await registry.add(account("stale"))
    await registry.mark("stale", AccountState.EXPIRED, "upstream answered 401")

    view = await data(
        await api.patch("/api/admin/accounts/stale", json={"cookie": NEW_COOKIE}, headers=auth(ADMIN_KEY))
    )

    assert view["state"] == "active"
    assert await redis.hget(keys.account("stale"), "cookie") == NEW_COOKIE.encode()


async def test_adding_an_existing_account_is_a_conflict_that_keeps_the_old_one(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """A second POST with a taken name is 409 account_exists and the first account is untouched."""
    await registry.add(account("taken"))
    before = await redis_state(redis)

    response = await api.post(
        "/api/admin/accounts", json={"name": "taken", "cookie": COOKIE}, headers=auth(ADMIN_KEY)
    )

    assert response.status == 409
    assert (await response.json())["code"] == "account_exists"
    assert await redis_state(redis) == before


async def test_changing_an_unknown_account_is_unknown_account(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """PATCH on a name nobody added is 404 unknown_account and creates nothing."""
    response = await api.patch("/api/admin/accounts/ghost", json={"enabled": True}, headers=auth(ADMIN_KEY))

    assert response.status == 404
    assert (await response.json())["code"] == "unknown_account"
    assert await redis.keys("*") == []


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/admin/accounts", {"name": "x"}, "cookie"),
        ("POST", "/api/admin/accounts", {"name": "bad name!", "cookie": COOKIE}, "name"),
        (
            "POST",
            "/api/admin/accounts",
            {"name": "x", "cookie": COOKIE, "max_concurrency": 0},
            "max_concurrency",
        ),
        ("PATCH", "/api/admin/accounts/known", {"max_concurrency": 0}, "max_concurrency"),
        ("PATCH", "/api/admin/accounts/known", {"max_queue": -1}, "max_queue"),
        ("PATCH", "/api/admin/accounts/known", {"cookie": ""}, "cookie"),
        ("PATCH", "/api/admin/accounts/known", {"cookie": "access_token=a\r\nX-Evil: 1"}, "cookie"),
        ("PATCH", "/api/admin/accounts/known", {"enabled": "sometimes"}, "enabled"),
        ("PATCH", "/api/admin/accounts/known", {"max_concurency": 2}, "max_concurency"),
    ],
)
async def test_bad_admin_bodies_are_refused_and_change_nothing(
    api: ApiClient,
    registry: AccountRegistry,
    redis: redis_asyncio.Redis,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    """A bad field (or a misspelt one) is a 400 naming it; the message never repeats the cookie."""
    await registry.add(account("known"))
    before = await redis_state(redis)

    response = await api.request(method, path, json=body, headers=auth(ADMIN_KEY))

    assert response.status == 400
    text = await response.text()
    assert "secret-cookie" not in text
    answer = await response.json()
    assert answer["code"] == "invalid_request"
    assert field in answer["message"]
    assert await redis_state(redis) == before


async def test_removing_an_account_is_refused_while_it_has_work_unless_forced(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """DELETE is 409 account_busy (nothing changed) with work in flight; ?force=true sends that
    work back to the front of the queue, through the store's transition, to run elsewhere."""
    db = redis_asyncio.Redis.from_url(api.server.app[SETTINGS].redis_url, decode_responses=True)
    try:
        await registry.add(account("doomed", max_concurrency=2))
        await redis.hset(keys.account("doomed"), "available", 10)
        created = []
        for prompt in ("claimed one", "created one"):
            response = await api.post("/api/generations/create", json={"prompt": prompt}, headers=auth(KEY_A))
            created.append((await data(response))[0]["id"])
        store = GenerationStore(db, retention_seconds=3600, default_generation_seconds=10)
        scheduler = Scheduler(db, lease_seconds=60, store=store)
        assert {(await scheduler.claim()).account for _ in created} == {"doomed"}  # type: ignore[union-attr]
        # The second one reached Luma: an intent, then the upstream's id, then rendering.
        assert (await store.transition(created[1], Phase.SUBMITTING, fence=1, intent_at=1.0)).ok
        assert (await store.transition(created[1], Phase.PROCESSING, upstream_id="up-1")).ok
        await scheduler.mark_running(created[1], "doomed", 1.0, 1.0)
        admin = auth(ADMIN_KEY)

        before = await redis_state(redis)
        refused = await api.delete("/api/admin/accounts/doomed", headers=admin)
        assert refused.status == 409
        body = await refused.json()
        assert body["code"] == "account_busy" and body["in_flight"] == 2 and "force=true" in body["message"]
        assert await redis_state(redis) == before

        removed = await data(await api.delete("/api/admin/accounts/doomed?force=true", headers=admin))
        assert removed["removed"] is True and sorted(removed["rerouted"]) == sorted(created)
        assert await data(await api.get("/api/admin/accounts", headers=admin)) == []
        assert not await redis.exists(keys.account("doomed"), keys.leases("doomed"), keys.running("doomed"))
        for gen_id in created:
            record = await store.get(gen_id)
            assert record is not None
            assert record.phase is Phase.WAITING and record.account is None and record.upstream_id is None
            history = await data(await api.get(f"/api/generations/{gen_id}/events", headers=auth(KEY_A)))
            assert history[-1]["to"] == "waiting"
            view = await data(await api.get(f"/api/generations/{gen_id}", headers=auth(KEY_A)))
            assert view["state"] == "pending" and view["queue_position"] is not None

        await registry.add(account("spare", max_concurrency=2))
        await redis.hset(keys.account("spare"), "available", 10)
        assert {(await scheduler.claim()).account for _ in created} == {"spare"}  # type: ignore[union-attr]

        missing = await api.delete("/api/admin/accounts/doomed", headers=admin)
        assert missing.status == 404 and (await missing.json())["code"] == "unknown_account"
        wrong = await api.delete("/api/admin/accounts/spare?force=maybe", headers=admin)
        assert wrong.status == 400 and (await wrong.json())["code"] == "invalid_query"
        assert (await api.delete("/api/admin/accounts/spare", headers=auth(KEY_A))).status == 401
    finally:
        await db.aclose()
