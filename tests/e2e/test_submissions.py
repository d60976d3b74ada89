"""Idempotency and cancel with real workers: what the caller takes back or repeats is never paid for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, creates_per_prompt, wait_all_terminal
from tests.fixtures.simulator import simulator_with
from tests.fixtures.stack import WorkerProcess, accounts_for, headers


@simulator_with(pending_seconds=0.05, processing_seconds=0.2)
async def test_two_racing_creates_with_one_idempotency_key_make_one_upstream_create(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """The same timed-out-and-retried create, twice at once: one generation, one paid create."""
    start_worker(accounts_for(simulator, {"sim-1": 2}))

    async def create() -> str:
        response = await api_client.post(
            "/api/generations/create",
            json={"prompt": "exactly once"},
            headers={**headers(), "Idempotency-Key": "order-4711"},
        )
        assert response.status == 200
        gen_id: str = (await response.json())["data"][0]["id"]
        return gen_id

    first, second = await asyncio.gather(create(), create())
    assert first == second
    [record] = await wait_all_terminal(redis, [first], within=30)
    assert record.state == "completed"
    assert creates_per_prompt(simulator) == {"exactly once": 1}


@simulator_with(pending_seconds=0.05, processing_seconds=1.0)
async def test_a_cancelled_waiting_generation_never_reaches_the_upstream(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """One slot, three prompts: the third, cancelled while it waits, is never created; the rest are."""
    ids = await create_many(api_client, ["runs", "also runs", "taken back"])
    cancelled = await api_client.post(f"/api/generations/{ids[2]}/cancel", headers=headers())
    assert cancelled.status == 200
    start_worker(accounts_for(simulator, {"sim-1": 1}))
    found = await wait_all_terminal(redis, ids, within=60)
    assert [record.state for record in found] == ["completed", "completed", "failed"]
    assert found[2].failure_reason == "cancelled"
    assert creates_per_prompt(simulator) == {"runs": 1, "also runs": 1}
