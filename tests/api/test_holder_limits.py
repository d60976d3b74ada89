"""Fair limits per key holder: one key cannot fill the queue for everyone, nor create without bound."""

from __future__ import annotations

import redis.asyncio as redis_asyncio

from api.auth import owner_id
from tests.api.conftest import ADMIN_KEY, KEY_A, KEY_B, ApiClient, MakeApi, auth, redis_state


async def create(api: ApiClient, key: str, prompt: str = "p") -> int:
    response = await api.post("/api/generations/create", json={"prompt": prompt}, headers=auth(key))
    return response.status


async def test_one_holder_filling_its_share_does_not_lock_out_another(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """Queue of 20, two keys: each may have 5 waiting; bob's sixth is refused, alice still gets in."""
    api = await make_api(max_queue_depth=20)
    for n in range(5):
        assert await create(api, KEY_B, f"bob {n}") == 200
    before = await redis_state(redis)
    refused = await api.post("/api/generations/create", json={"prompt": "bob 5"}, headers=auth(KEY_B))
    assert refused.status == 429
    body = await refused.json()
    assert body["code"] == "holder_queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"] == '"queued";q=5'
    assert refused.headers["RateLimit"] == '"queued";r=0'
    assert await redis_state(redis) == before
    assert await create(api, KEY_A, "alice 0") == 200


async def test_a_single_key_may_use_the_whole_queue(make_api: MakeApi) -> None:
    """With one key there is nobody to protect: the pool's bound is its bound."""
    api = await make_api(max_queue_depth=8, secret_key=[KEY_A])
    assert [await create(api, KEY_A) for _ in range(8)] == [200] * 8
    response = await api.post("/api/generations/create", json={"prompt": "ninth"}, headers=auth(KEY_A))
    assert (await response.json())["code"] == "queue_full"


async def test_creates_per_minute_answer_rate_limited_with_the_ietf_headers(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    api = await make_api(holder_creates_per_minute=3)
    ok = await api.post("/api/generations/create", json={"prompt": "1"}, headers=auth(KEY_A))
    assert ok.headers["RateLimit-Policy"] == '"creates";q=3;w=60'
    assert ok.headers["RateLimit"].startswith('"creates";r=2;')
    assert [await create(api, KEY_A) for _ in range(2)] == [200, 200]
    before = await redis_state(redis)
    refused = await api.post("/api/generations/create", json={"prompt": "4"}, headers=auth(KEY_A))
    assert refused.status == 429
    assert (await refused.json())["code"] == "rate_limited"
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert refused.headers["RateLimit"] == f'"creates";r=0;t={wait}'
    assert await redis_state(redis) == before
    assert await create(api, KEY_B) == 200, "another holder has its own minute"


async def test_a_batch_counts_every_item_against_the_rate(make_api: MakeApi) -> None:
    api = await make_api(holder_creates_per_minute=3)
    response = await api.post(
        "/api/generations/batch", json={"items": [{"prompt": str(n)} for n in range(4)]}, headers=auth(KEY_A)
    )
    assert response.status == 429
    assert "split them" in (await response.json())["message"]


async def test_the_admin_sees_each_holder_and_overrides_its_limits(make_api: MakeApi) -> None:
    """GET /api/admin/holders lists the holders; a PATCH gives one its own limit, null restores it."""
    api = await make_api(max_queue_depth=20)
    await create(api, KEY_B)
    listing = await api.get("/api/admin/holders", headers=auth(ADMIN_KEY))
    holders = {row["owner"]: row for row in (await listing.json())["data"]}
    bob = owner_id(KEY_B)
    assert holders[bob]["waiting"] == 1 and holders[bob]["max_queued"] == 5
    assert set(holders) == {owner_id(KEY_A), bob}

    patched = await api.patch(f"/api/admin/holders/{bob}", json={"max_queued": 1}, headers=auth(ADMIN_KEY))
    assert (await patched.json())["data"]["max_queued"] == 1
    assert await create(api, KEY_B) == 429
    await api.patch(f"/api/admin/holders/{bob}", json={"max_queued": None}, headers=auth(ADMIN_KEY))
    assert await create(api, KEY_B) == 200

    unknown = await api.patch("/api/admin/holders/nobody", json={"max_queued": 1}, headers=auth(ADMIN_KEY))
    assert unknown.status == 404 and (await unknown.json())["code"] == "unknown_holder"
    assert (await api.get("/api/admin/holders", headers=auth(KEY_A))).status == 401
