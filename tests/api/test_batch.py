"""POST /api/generations/batch: many at once, all or nothing, in the order given."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis_asyncio

from api.auth import owner_id
from shared import keys
from tests.api.conftest import KEY_A, KEY_B, ApiClient, MakeApi, auth, redis_state


async def batch(api: ApiClient, body: dict[str, Any], key: str = KEY_A) -> Any:
    return await api.post("/api/generations/batch", json=body, headers=auth(key))


async def test_a_thousand_items_are_accepted_in_one_request_and_keep_their_order(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """1,000 prompts: one answer in the order given, queued in that order, listed by batch_id."""
    prompts = [f"prompt {n}" for n in range(1000)]
    response = await batch(api, {"items": [{"prompt": prompt} for prompt in prompts]})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["message"] == "Success" and body["batch_id"]
    assert [view["prompt"] for view in body["data"]] == prompts
    assert [view["queue_position"] for view in body["data"]][:3] == [1, 2, 3]
    assert all(view["batch_id"] == body["batch_id"] for view in body["data"])
    ids = [view["id"] for view in body["data"]]
    queued = await redis.zrange(keys.wait_queue(owner_id(KEY_A)), 0, -1)
    assert [gen_id.decode() for gen_id in queued] == ids

    listed = await api.get(f"/api/generations?batch_id={body['batch_id']}&limit=100", headers=auth(KEY_A))
    assert [view["id"] for view in (await listed.json())["data"]] == list(reversed(ids))[:100]


async def test_one_bad_item_refuses_the_whole_batch_naming_its_index_and_field(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    before = await redis_state(redis)
    response = await batch(api, {"items": [{"prompt": "fine"}, {"prompt": "fine too"}, {"prompt": ""}]})
    assert response.status == 400
    body = await response.json()
    assert body["code"] == "invalid_request"
    assert [error["field"] for error in body["errors"]] == ["items.2.prompt"]
    assert "items.2.prompt" in body["message"]
    assert await redis_state(redis) == before


async def test_a_batch_that_would_overflow_the_queue_is_429_and_stores_nothing(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """Three slots left, four items: queue_full with Retry-After; not even the first three are kept."""
    api = await make_api(max_queue_depth=5, holder_max_queued=5)
    assert (await batch(api, {"items": [{"prompt": "a"}, {"prompt": "b"}]})).status == 200
    before = await redis_state(redis)
    response = await batch(api, {"items": [{"prompt": str(n)} for n in range(4)]})
    assert response.status == 429
    assert (await response.json())["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) >= 1
    assert await redis_state(redis) == before


async def test_batch_size_and_emptiness_are_bounded(make_api: MakeApi) -> None:
    api = await make_api(batch_max_items=3)
    too_many = await batch(api, {"items": [{"prompt": str(n)} for n in range(4)]})
    empty = await batch(api, {"items": []})
    assert too_many.status == empty.status == 400
    assert "at most 3" in (await too_many.json())["message"]


async def test_the_batch_callback_is_each_items_unless_the_item_names_its_own(make_api: MakeApi) -> None:
    api = await make_api(webhook_allow_private_networks=True)
    response = await batch(
        api,
        {
            "items": [{"prompt": "shared"}, {"prompt": "own", "callback_url": "http://127.0.0.1:9/own"}],
            "callback_url": "http://127.0.0.1:9/batch",
        },
    )
    views = (await response.json())["data"]
    assert [view["callback_url"] for view in views] == ["http://127.0.0.1:9/batch", "http://127.0.0.1:9/own"]


async def test_a_private_batch_callback_is_refused(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    before = await redis_state(redis)
    response = await batch(api, {"items": [{"prompt": "x"}], "callback_url": "http://10.1.1.1/hook"})
    assert response.status == 400
    assert (await response.json())["code"] == "callback_url_not_allowed"
    assert await redis_state(redis) == before


async def test_another_holder_cannot_list_a_batch(api: ApiClient) -> None:
    """A batch id is scoped to its holder: another holder's list of it is empty."""
    body = await (await batch(api, {"items": [{"prompt": "mine"}]})).json()
    theirs = await api.get(f"/api/generations?batch_id={body['batch_id']}", headers=auth(KEY_B))
    assert theirs.status == 200 and (await theirs.json())["data"] == []
