"""List, detail and create: seed shapes, ownership, queue places, estimates, refusals that store nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from shared import keys
from shared.accounts import AccountRegistry
from tests.api.conftest import KEY_A, KEY_B, ApiClient, MakeApi, account, auth, redis_state

SEED_FIELDS = {"id", "prompt", "state", "created_at", "video", "liked", "estimate_wait_seconds"}


async def create(api: ApiClient, key: str, prompt: str, **fields: Any) -> dict[str, Any]:
    response = await api.post("/api/generations/create", json={"prompt": prompt, **fields}, headers=auth(key))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def listed(api: ApiClient, key: str, query: str = "") -> list[dict[str, Any]]:
    response = await api.get(f"/api/generations{query}", headers=auth(key))
    assert response.status == 200, await response.text()
    data: list[dict[str, Any]] = (await response.json())["data"]
    return data


async def test_create_stores_a_pending_record_and_answers_in_the_seed_shape(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """A create answers {"message": "Success", "data": [view]}; the record, index and queue hold it."""
    body = await create(api, KEY_A, "a red fox", aspect_ratio="9:16", loop=True)

    assert body["message"] == "Success"
    [view] = body["data"]
    assert view.keys() >= SEED_FIELDS
    assert view["prompt"] == "a red fox"
    assert view["state"] == "pending"
    assert view["video"] is None
    assert view["queue_position"] == 1
    assert view["created_at"].endswith("Z")
    stored = await redis.get(keys.generation(view["id"]))
    assert stored is not None and b'"phase":"waiting"' in stored and b'"aspect_ratio":"9:16"' in stored
    assert await redis.zscore(keys.WAIT_ALL, view["id"]) is not None
    assert [item["id"] for item in await listed(api, KEY_A)] == [view["id"]]


async def test_detail_returns_the_callers_generation(api: ApiClient) -> None:
    """GET /api/generations/{id} answers {"data": generation} for the holder who created it."""
    [created] = (await create(api, KEY_A, "detail"))["data"]

    response = await api.get(f"/api/generations/{created['id']}", headers=auth(KEY_A))

    assert response.status == 200
    view = (await response.json())["data"]
    assert view["id"] == created["id"] and view["prompt"] == "detail" and view["queue_position"] == 1


async def test_another_holders_generation_is_not_found_and_not_listed(api: ApiClient) -> None:
    """One key holder never sees another's generations: the id reads as unknown, the list is empty."""
    [created] = (await create(api, KEY_A, "mine"))["data"]

    response = await api.get(f"/api/generations/{created['id']}", headers=auth(KEY_B))

    assert response.status == 404
    assert (await response.json())["code"] == "not_found"
    assert await listed(api, KEY_B) == []


async def test_unknown_generation_is_not_found(api: ApiClient) -> None:
    """An id nobody created answers 404 not_found as JSON."""
    response = await api.get("/api/generations/no-such-id", headers=auth(KEY_A))

    assert response.status == 404
    assert (await response.json())["code"] == "not_found"


async def test_list_is_newest_first_and_pages_with_offset_and_limit(api: ApiClient) -> None:
    """The list is newest first; offset and limit cut pages out of it; the default page is 10."""
    ids = [(await create(api, KEY_A, f"prompt {i}"))["data"][0]["id"] for i in range(12)]
    newest_first = ids[::-1]

    assert [item["id"] for item in await listed(api, KEY_A)] == newest_first[:10]
    assert [item["id"] for item in await listed(api, KEY_A, "?offset=0&limit=3")] == newest_first[:3]
    assert [item["id"] for item in await listed(api, KEY_A, "?offset=3&limit=4")] == newest_first[3:7]
    assert [item["id"] for item in await listed(api, KEY_A, "?offset=10&limit=5")] == newest_first[10:]
    assert await listed(api, KEY_A, "?offset=50") == []


@pytest.mark.parametrize(
    "query",
    [
        "?offset=-1",
        "?offset=abc",
        "?offset=1.5",
        "?limit=0",
        "?limit=101",
        "?limit=-5",
        "?limit=",
        "?limit=ten",
        "?limit=1&limit=2",
        "?offset=99999999999999999999999",
    ],
)
async def test_list_rejects_a_bad_offset_or_limit(api: ApiClient, query: str) -> None:
    """offset must be an integer >= 0 and limit one from 1 to LIST_MAX_LIMIT; anything else is a 400."""
    response = await api.get(f"/api/generations{query}", headers=auth(KEY_A))

    assert response.status == 400
    body = await response.json()
    assert body["code"] == "invalid_query"
    assert ("offset" in body["message"]) or ("limit" in body["message"])


async def test_list_limit_is_bounded_by_settings(make_api: MakeApi) -> None:
    """LIST_MAX_LIMIT is the largest page a caller may ask for."""
    api = await make_api(list_max_limit=5)

    assert (await api.get("/api/generations?limit=5", headers=auth(KEY_A))).status == 200
    assert (await api.get("/api/generations?limit=6", headers=auth(KEY_A))).status == 400


async def test_one_holder_gets_fifo_queue_positions(api: ApiClient) -> None:
    """A holder's waiting generations stand 1..n in the order they were created."""
    created = [(await create(api, KEY_A, f"p{i}"))["data"][0] for i in range(3)]

    assert [view["queue_position"] for view in created] == [1, 2, 3]
    listed_positions = {item["id"]: item["queue_position"] for item in await listed(api, KEY_A)}
    assert [listed_positions[view["id"]] for view in created] == [1, 2, 3]


async def test_two_holders_are_served_round_robin(api: ApiClient) -> None:
    """A second holder's work interleaves with the first's instead of waiting behind all of it."""
    a_ids = [(await create(api, KEY_A, f"a{i}"))["data"][0]["id"] for i in range(3)]
    b_ids = [(await create(api, KEY_B, f"b{i}"))["data"][0]["id"] for i in range(2)]

    a_places = {item["id"]: item["queue_position"] for item in await listed(api, KEY_A)}
    b_places = {item["id"]: item["queue_position"] for item in await listed(api, KEY_B)}
    a_positions = [a_places[gen_id] for gen_id in a_ids]
    b_positions = [b_places[gen_id] for gen_id in b_ids]

    # Which holder's turn comes first is the scheduler's tie-break; either way they alternate.
    assert (a_positions, b_positions) in [([1, 3, 5], [2, 4]), ([2, 4, 5], [1, 3])]


async def test_estimates_count_the_free_slots_of_active_accounts(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """Waits come from active accounts' slots minus live leases; a disabled account adds nothing."""
    await registry.add(account("one", max_concurrency=2))
    await registry.add(account("off", max_concurrency=5))
    await registry.update("off", enabled=False)
    await redis.zadd(keys.leases("one"), {"someone-elses": int(time.time() * 1000) + 60_000})
    await redis.set(keys.GEN_SECONDS, "100")

    created = [(await create(api, KEY_A, f"p{i}"))["data"][0] for i in range(4)]

    # 2 slots, 1 free: the first starts now, the next two after one run, the fourth after two.
    assert [view["estimate_wait_seconds"] for view in created[-1:]] == [200.0]
    waits = {item["id"]: item["estimate_wait_seconds"] for item in await listed(api, KEY_A)}
    assert [waits[view["id"]] for view in created] == [0.0, 100.0, 100.0, 200.0]


async def test_estimate_is_null_while_no_account_can_run_anything(api: ApiClient) -> None:
    """With no active account there is no honest estimate: the field is null, the position is kept."""
    [view] = (await create(api, KEY_A, "alone"))["data"]

    assert view["queue_position"] == 1
    assert view["estimate_wait_seconds"] is None


async def test_finished_generations_have_no_queue_place(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    """A generation that left the queue shows no position and no estimate."""
    [view] = (await create(api, KEY_A, "done soon"))["data"]
    raw = await redis.get(keys.generation(view["id"]))
    assert raw is not None
    finished = raw.replace(b'"phase":"waiting"', b'"phase":"done"').replace(
        b'"state":"pending"', b'"state":"completed"'
    )
    await redis.set(keys.generation(view["id"]), finished)

    [item] = await listed(api, KEY_A)

    assert item["state"] == "completed"
    assert item["queue_position"] is None and item["estimate_wait_seconds"] is None


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"this is not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b'["a list"]', "invalid_json", None),
        (b'"a string"', "invalid_json", None),
        (b"{}", "invalid_request", "prompt"),
        (b'{"prompt": ""}', "invalid_request", "prompt"),
        (b'{"prompt": 42}', "invalid_request", "prompt"),
        (b'{"prompt": "ok", "image": "ftp://example.com/a.png"}', "invalid_request", "image"),
        (b'{"prompt": "ok", "image": "not a url"}', "invalid_request", "image"),
        (b'{"prompt": "ok", "image_end": "file:///etc/passwd"}', "invalid_request", "image_end"),
        (b'{"prompt": "ok", "image": ""}', "invalid_request", "image"),
        (b'{"prompt": "ok", "image_end": "  "}', "invalid_request", "image_end"),
        (b'{"prompt": "ok", "aspect_ratio": "wide"}', "invalid_request", "aspect_ratio"),
    ],
)
async def test_create_rejects_bad_input_and_stores_nothing(
    api: ApiClient, redis: redis_asyncio.Redis, body: bytes, code: str, field: str | None
) -> None:
    """Bad JSON or a bad field is a 400 that names the field, and Redis is exactly as before."""
    before = await redis_state(redis)

    response = await api.post(
        "/api/generations/create",
        data=body,
        headers={**auth(KEY_A), "Content-Type": "application/json"},
    )

    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == code
    if field is not None:
        assert field in answer["message"]
        assert field in [error["field"] for error in answer["errors"]]
    assert await redis_state(redis) == before


async def test_create_body_larger_than_the_app_limit_is_json_too_large(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """aiohttp's own body limit answers 413 too_large as JSON, and nothing is stored."""
    api = await make_api(upload_max_bytes=1000)
    before = await redis_state(redis)
    huge = b'{"prompt": "' + b"x" * 200_000 + b'"}'

    response = await api.post("/api/generations/create", data=huge, headers=auth(KEY_A))

    assert response.status == 413
    assert (await response.json())["code"] == "too_large"
    assert await redis_state(redis) == before


async def test_create_answers_queue_full_with_retry_after_and_stores_nothing(
    make_api: MakeApi, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """At MAX_QUEUE_DEPTH a create is a 429 queue_full with Retry-After, and nothing is stored."""
    api = await make_api(max_queue_depth=2, default_generation_seconds=90)
    await registry.add(account("one", max_concurrency=2))
    await create(api, KEY_A, "first")
    await create(api, KEY_B, "second")
    before = await redis_state(redis)

    response = await api.post("/api/generations/create", json={"prompt": "third"}, headers=auth(KEY_A))

    assert response.status == 429
    assert (await response.json())["code"] == "queue_full"
    assert response.headers["Retry-After"] == "45"  # one 90 s run over 2 slots
    assert await redis_state(redis) == before


async def test_retry_after_is_at_least_one_second(make_api: MakeApi, redis: redis_asyncio.Redis) -> None:
    """However fast generations are measured to be, Retry-After is a whole number of seconds >= 1."""
    api = await make_api(max_queue_depth=1)
    await redis.set(keys.GEN_SECONDS, "0.2")
    await create(api, KEY_A, "first")

    response = await api.post("/api/generations/create", json={"prompt": "second"}, headers=auth(KEY_A))

    assert response.status == 429
    assert response.headers["Retry-After"] == "1"


async def test_queue_bound_is_lowered_by_the_accounts_own_max_queue(
    api: ApiClient, registry: AccountRegistry
) -> None:
    """When every enabled account sets max_queue, their sum bounds the queue; one unset lifts it."""
    await registry.add(account("one", max_queue=1))
    await registry.add(account("two", max_queue=1))
    await create(api, KEY_A, "first")
    await create(api, KEY_A, "second")

    refused = await api.post("/api/generations/create", json={"prompt": "third"}, headers=auth(KEY_A))
    assert refused.status == 429

    await registry.update("two", clear_max_queue=True)  # "two" no longer bounds its queue
    await create(api, KEY_A, "third")


async def test_create_pins_a_generation_to_the_account_holding_its_image(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """An image we uploaded lives on one account, so a create that uses it is pinned there."""
    image = "https://cdn.example.com/uploads/abc.jpg"
    await redis.set(keys.upload_account(image), "account-7")

    [pinned] = (await create(api, KEY_A, "with image", image=image))["data"]
    [free] = (await create(api, KEY_A, "foreign image", image="https://elsewhere.example.com/x.png"))["data"]

    assert await redis.hget(keys.WAIT_PIN, pinned["id"]) == b"account-7"
    assert await redis.hget(keys.WAIT_PIN, free["id"]) is None


async def test_a_corrupt_record_is_a_json_internal_error(api: ApiClient, redis: redis_asyncio.Redis) -> None:
    """Anything unexpected is a 500 internal_error in the usual JSON shape, not an HTML page."""
    [view] = (await create(api, KEY_A, "soon corrupt"))["data"]
    await redis.set(keys.generation(view["id"]), b"{not json")

    response = await api.get(f"/api/generations/{view['id']}", headers=auth(KEY_A))

    assert response.status == 500
    assert response.content_type == "application/json"
    assert (await response.json())["code"] == "internal_error"


async def test_a_page_without_waiting_records_does_not_read_the_pool(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """Reads of finished work stay cheap: no account, lease or queue-place lookups, just index + MGET."""
    await registry.add(account("one"))
    [view] = (await create(api, KEY_A, "finished"))["data"]
    raw = await redis.get(keys.generation(view["id"]))
    assert raw is not None
    await redis.set(keys.generation(view["id"]), raw.replace(b'"phase":"waiting"', b'"phase":"done"'))
    await redis.config_resetstat()

    await listed(api, KEY_A)

    commands = {name.removeprefix("cmdstat_") for name in await redis.info("commandstats")}
    assert {"zrevrange", "mget"} <= commands
    assert not commands & {"smembers", "hgetall", "zcount", "zrank", "zcard"}
