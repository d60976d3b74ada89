"""Idempotency-Key on create and batch: a repeat answers what the first did and stores nothing new."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from tests.api.conftest import KEY_A, KEY_B, ApiClient, auth, redis_state


def idem(key: str, holder: str = KEY_A) -> dict[str, str]:
    return {**auth(holder), "Idempotency-Key": key}


async def post(api: ApiClient, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    response = await api.post(path, json=body, headers=headers)
    return response.status, await response.json()


async def test_a_repeated_create_answers_the_same_generation_and_stores_nothing(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    status, first = await post(api, "/api/generations/create", {"prompt": "fox"}, idem("order-4711"))
    assert status == 200
    after_first = await redis_state(redis)
    status, again = await post(api, "/api/generations/create", {"prompt": "fox"}, idem("order-4711"))
    assert status == 200
    assert [view["id"] for view in again["data"]] == [view["id"] for view in first["data"]]
    assert await redis_state(redis) == after_first


async def test_the_same_key_with_another_body_is_422_and_stores_nothing(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    await post(api, "/api/generations/create", {"prompt": "fox"}, idem("k"))
    before = await redis_state(redis)
    status, body = await post(api, "/api/generations/create", {"prompt": "wolf"}, idem("k"))
    assert status == 422 and body["code"] == "idempotency_key_reused"
    status, body = await post(api, "/api/generations/batch", {"items": [{"prompt": "fox"}]}, idem("k"))
    assert status == 422, "create and batch share a holder's keys; the endpoint is part of the request"
    assert await redis_state(redis) == before


async def test_keys_are_scoped_to_their_holder(api: ApiClient) -> None:
    """Two holders may use the same Idempotency-Key for different things."""
    _, mine = await post(api, "/api/generations/create", {"prompt": "fox"}, idem("shared-key"))
    status, theirs = await post(api, "/api/generations/create", {"prompt": "owl"}, idem("shared-key", KEY_B))
    assert status == 200 and theirs["data"][0]["id"] != mine["data"][0]["id"]


async def test_racing_identical_creates_make_one_generation(api: ApiClient) -> None:
    """Ten identical requests at once: one generation, and every answer carries its id."""
    answers = await asyncio.gather(
        *(post(api, "/api/generations/create", {"prompt": "race"}, idem("race-1")) for _ in range(10))
    )
    assert {status for status, _ in answers} == {200}
    assert len({body["data"][0]["id"] for _, body in answers}) == 1
    listed = await api.get("/api/generations", headers=auth(KEY_A))
    assert len((await listed.json())["data"]) == 1


async def test_a_repeated_batch_answers_the_same_batch(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    body = {"items": [{"prompt": "one"}, {"prompt": "two"}]}
    _, first = await post(api, "/api/generations/batch", body, idem("chunk-1"))
    after_first = await redis_state(redis)
    status, again = await post(api, "/api/generations/batch", body, idem("chunk-1"))
    assert status == 200 and again["batch_id"] == first["batch_id"]
    assert [view["id"] for view in again["data"]] == [view["id"] for view in first["data"]]
    assert await redis_state(redis) == after_first


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "naïve"])
async def test_a_malformed_key_is_400(api: ApiClient, redis: redis_asyncio.Redis, key: str) -> None:
    before = await redis_state(redis)
    response = await api.post(
        "/api/generations/create", json={"prompt": "p"}, headers={**auth(KEY_A), "Idempotency-Key": key}
    )
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_idempotency_key"
    assert await redis_state(redis) == before
