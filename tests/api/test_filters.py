"""List filters: state, ids and batch_id, combinable, newest first, bounded; bad values are 400."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

from shared.states import Phase
from shared.store import GenerationStore
from tests.api.conftest import KEY_A, KEY_B, ApiClient, auth


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[GenerationStore]:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield GenerationStore(client, retention_seconds=3600, default_generation_seconds=10)
    await client.aclose()


async def listed(api: ApiClient, query: str, key: str = KEY_A) -> list[str]:
    response = await api.get(f"/api/generations?{query}", headers=auth(key))
    assert response.status == 200, await response.text()
    return [view["id"] for view in (await response.json())["data"]]


async def finish(store: GenerationStore, gen_id: str, end: Phase) -> None:
    for step in (Phase.CLAIMED, Phase.SUBMITTING, end):
        assert (await store.transition(gen_id, step)).ok


@pytest_asyncio.fixture
async def history(api: ApiClient, store: GenerationStore) -> dict[str, list[str]]:
    """Six singles (two completed, one failed, three waiting) and a batch of three (one completed)."""
    made: dict[str, list[str]] = {"all": [], "completed": [], "failed": [], "pending": [], "batch": []}
    for n in range(6):
        response = await api.post("/api/generations/create", json={"prompt": f"p{n}"}, headers=auth(KEY_A))
        made["all"].append((await response.json())["data"][0]["id"])
    batch = await api.post(
        "/api/generations/batch", json={"items": [{"prompt": f"b{n}"} for n in range(3)]}, headers=auth(KEY_A)
    )
    body = await batch.json()
    made["batch_id"] = [body["batch_id"]]
    made["batch"] = [view["id"] for view in body["data"]]
    made["all"] += made["batch"]
    for gen_id in (made["all"][0], made["all"][3], made["batch"][1]):
        await finish(store, gen_id, Phase.COMPLETED)
        made["completed"].append(gen_id)
    await finish(store, made["all"][4], Phase.FAILED)
    made["failed"].append(made["all"][4])
    made["pending"] = [gen_id for gen_id in made["all"] if gen_id not in made["completed"] + made["failed"]]
    return made


def newest_first(ids: list[str], order: list[str]) -> list[str]:
    return sorted(ids, key=order.index, reverse=True)


async def test_state_picks_the_holders_generations_in_those_states(
    api: ApiClient, history: dict[str, list[str]]
) -> None:
    order = history["all"]
    assert await listed(api, "state=completed") == newest_first(history["completed"], order)
    both = history["completed"] + history["failed"]
    assert await listed(api, "state=completed,failed") == newest_first(both, order)
    assert await listed(api, "state=completed,failed&offset=1&limit=2") == newest_first(both, order)[1:3]
    assert await listed(api, "state=pending&limit=100") == newest_first(history["pending"], order)
    assert await listed(api, "state=completed", KEY_B) == []


async def test_batch_id_and_state_combine(api: ApiClient, history: dict[str, list[str]]) -> None:
    batch_id = history["batch_id"][0]
    assert await listed(api, f"batch_id={batch_id}") == list(reversed(history["batch"]))
    assert await listed(api, f"batch_id={batch_id}&state=completed") == [history["batch"][1]]
    assert await listed(api, f"batch_id={batch_id}&state=failed") == []


async def test_ids_pick_those_of_the_holders_newest_first_and_skip_unknown_ones(
    api: ApiClient, history: dict[str, list[str]]
) -> None:
    chosen = [history["all"][1], history["all"][5], "00000000-0000-0000-0000-000000000000", history["all"][0]]
    assert await listed(api, "ids=" + ",".join(chosen)) == newest_first(
        [history["all"][1], history["all"][5], history["all"][0]], history["all"]
    )
    assert await listed(api, "ids=" + ",".join(chosen) + "&state=completed") == [history["all"][0]]
    assert await listed(api, "ids=" + ",".join(chosen), KEY_B) == []


@pytest.mark.parametrize(
    "query",
    [
        "state=done",
        "state=",
        "state=completed,bogus",
        "ids=" + ",".join(["x"] * 101),
        "ids=a;b",
        "batch_id=../x",
    ],
)
async def test_a_bad_filter_is_400(api: ApiClient, redis: redis_asyncio.Redis, query: str) -> None:
    """An unknown state, an empty list, more than 100 ids or a malformed id: invalid_query."""
    response = await api.get(f"/api/generations?{query}", headers=auth(KEY_A))
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_query"
