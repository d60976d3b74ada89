"""The webhook endpoints of the api: each holder's secret, its rotation, and who may see or redeliver what."""

from __future__ import annotations

import base64

import redis.asyncio as redis_asyncio

from tests.api.conftest import ADMIN_KEY, KEY_A, KEY_B, ApiClient, auth, redis_state


async def secret(api: ApiClient, key: str) -> str:
    response = await api.get("/api/webhooks/secret", headers=auth(key))
    assert response.status == 200
    value: str = (await response.json())["data"]["secret"]
    return value


async def test_each_holder_gets_its_own_secret_made_once(api: ApiClient) -> None:
    """whsec_ and 32 random bytes; the same on every read; another holder's is another."""
    first = await secret(api, KEY_A)
    assert first.startswith("whsec_") and len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert await secret(api, KEY_A) == first
    assert await secret(api, KEY_B) != first


async def test_a_rotation_answers_the_new_secret_and_leaves_other_holders_alone(api: ApiClient) -> None:
    """POST .../rotate: a new secret for the caller, which every later read returns; bob's is unchanged."""
    old, bobs = await secret(api, KEY_A), await secret(api, KEY_B)
    response = await api.post("/api/webhooks/secret/rotate", headers=auth(KEY_A))
    assert response.status == 200
    new = (await response.json())["data"]["secret"]
    assert new != old and await secret(api, KEY_A) == new
    assert await secret(api, KEY_B) == bobs


async def test_the_secret_needs_a_holders_key(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    """No key, a wrong one, or only the admin's: 401 JSON, and no secret is made."""
    before = await redis_state(redis)
    for sent in ({}, auth("not-a-key"), auth(ADMIN_KEY)):
        for method, path in (("GET", "/api/webhooks/secret"), ("POST", "/api/webhooks/secret/rotate")):
            response = await api.request(method, path, headers=sent)
            assert response.status == 401
            assert (await response.json())["code"] == "unauthorized"
    assert await redis_state(redis) == before


async def test_deliveries_and_redeliver_of_an_unknown_generation(api: ApiClient) -> None:
    """/deliveries of an unknown id is 404; redeliver is the admin's alone, and 404 for an unknown id."""
    response = await api.get("/api/generations/no-such-id/deliveries", headers=auth(KEY_A))
    assert response.status == 404 and (await response.json())["code"] == "not_found"
    holder = await api.post("/api/admin/generations/no-such-id/redeliver", headers=auth(KEY_A))
    assert holder.status == 401
    admin = await api.post("/api/admin/generations/no-such-id/redeliver", headers=auth(ADMIN_KEY))
    assert admin.status == 404 and (await admin.json())["code"] == "not_found"


async def test_a_generation_without_a_callback_has_no_deliveries_and_nothing_to_redeliver(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """An empty list to its owner; 409 nothing_to_redeliver to the admin, with nothing changed."""
    created = await api.post("/api/generations/create", json={"prompt": "quiet"}, headers=auth(KEY_A))
    gen_id = (await created.json())["data"][0]["id"]
    response = await api.get(f"/api/generations/{gen_id}/deliveries", headers=auth(KEY_A))
    assert response.status == 200 and (await response.json())["data"] == []
    other = await api.get(f"/api/generations/{gen_id}/deliveries", headers=auth(KEY_B))
    assert other.status == 404

    before = await redis_state(redis)
    refused = await api.post(f"/api/admin/generations/{gen_id}/redeliver", headers=auth(ADMIN_KEY))
    assert refused.status == 409 and (await refused.json())["code"] == "nothing_to_redeliver"
    assert await redis_state(redis) == before
