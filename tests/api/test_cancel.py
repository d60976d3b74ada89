"""POST /api/generations/{id}/cancel: take back what has not reached Luma; refuse what has."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

from shared import keys
from shared.states import Phase
from shared.store import GenerationStore
from tests.api.conftest import KEY_A, KEY_B, ApiClient, auth


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[GenerationStore]:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield GenerationStore(client, retention_seconds=3600, default_generation_seconds=10)
    await client.aclose()


async def create(api: ApiClient, prompt: str) -> str:
    response = await api.post("/api/generations/create", json={"prompt": prompt}, headers=auth(KEY_A))
    gen_id: str = (await response.json())["data"][0]["id"]
    return gen_id


async def cancel(api: ApiClient, gen_id: str, key: str = KEY_A) -> tuple[int, dict[str, object]]:
    response = await api.post(f"/api/generations/{gen_id}/cancel", headers=auth(key))
    return response.status, await response.json()


async def test_a_waiting_generation_leaves_the_queue_at_once_and_ends_cancelled(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    first, second = await create(api, "one"), await create(api, "two")
    status, body = await cancel(api, first)
    assert status == 200
    view = body["data"]
    assert isinstance(view, dict)
    assert view["state"] == "failed" and view["failure_reason"] == "cancelled"
    assert await redis.zscore(keys.WAIT_ALL, first) is None
    assert [gen_id.decode() for gen_id in await redis.zrange(keys.WAIT_ALL, 0, -1)] == [second]
    detail = await api.get(f"/api/generations/{second}", headers=auth(KEY_A))
    assert (await detail.json())["data"]["queue_position"] == 1, "the one behind moved up"


async def test_repeating_a_cancel_is_harmless(api: ApiClient) -> None:
    gen_id = await create(api, "twice")
    assert (await cancel(api, gen_id))[0] == 200
    status, body = await cancel(api, gen_id)
    assert status == 200 and body["data"]["failure_reason"] == "cancelled"  # type: ignore[index]


async def test_a_claimed_generation_can_still_be_cancelled(api: ApiClient, store: GenerationStore) -> None:
    """Claimed but not submitted: nothing has reached the upstream, so it can still be taken back."""
    gen_id = await create(api, "claimed")
    assert (await store.transition(gen_id, Phase.CLAIMED, account="sim-1")).ok
    status, body = await cancel(api, gen_id)
    assert status == 200 and body["data"]["failure_reason"] == "cancelled"  # type: ignore[index]


@pytest.mark.parametrize("phase", [Phase.SUBMITTING, Phase.QUEUED_UPSTREAM, Phase.PROCESSING])
async def test_one_that_may_exist_upstream_is_409_already_submitted(
    api: ApiClient, store: GenerationStore, phase: Phase
) -> None:
    gen_id = await create(api, "sent")
    for step in (Phase.CLAIMED, Phase.SUBMITTING, phase):
        await store.transition(gen_id, step, fence=1)
    status, body = await cancel(api, gen_id)
    assert status == 409 and body["code"] == "already_submitted"
    record = await store.get(gen_id)
    assert record is not None and record.phase is phase


async def test_a_finished_one_is_409_already_finished(api: ApiClient, store: GenerationStore) -> None:
    gen_id = await create(api, "done")
    for step in (Phase.CLAIMED, Phase.SUBMITTING, Phase.COMPLETED):
        await store.transition(gen_id, step)
    status, body = await cancel(api, gen_id)
    assert status == 409 and body["code"] == "already_finished"


async def test_another_holders_generation_is_404(api: ApiClient, store: GenerationStore) -> None:
    gen_id = await create(api, "not yours")
    status, body = await cancel(api, gen_id, KEY_B)
    assert status == 404 and body["code"] == "not_found"
    record = await store.get(gen_id)
    assert record is not None and record.phase is Phase.WAITING
