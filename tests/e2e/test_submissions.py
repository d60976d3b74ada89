"""Idempotency and cancel with real workers: what the caller takes back or repeats is never paid for."""

from __future__ import annotations

import asyncio

from tests.e2e.helpers import create_many, creates_per_prompt, wait_all_terminal
from tests.fixtures.simulator import simulator_with
from tests.fixtures.stack import Stack, headers


@simulator_with(pending_seconds=0.05, processing_seconds=0.2)
async def test_two_racing_creates_with_one_idempotency_key_make_one_upstream_create(stack: Stack) -> None:
    """The same timed-out-and-retried create, twice at once: one generation, one paid create."""
    stack.start_worker(stack.pool({"sim-1": 2}))

    async def create() -> str:
        response = await stack.api.post(
            "/api/generations/create",
            json={"prompt": "exactly once"},
            headers={**headers(), "Idempotency-Key": "order-4711"},
        )
        assert response.status == 200
        gen_id: str = (await response.json())["data"][0]["id"]
        return gen_id

    first, second = await asyncio.gather(create(), create())
    assert first == second
    [record] = await wait_all_terminal(stack.redis, [first], within=30)
    assert record.state == "completed"
    assert creates_per_prompt(stack.simulator) == {"exactly once": 1}


@simulator_with(pending_seconds=0.05, processing_seconds=1.0)
async def test_a_cancelled_waiting_generation_never_reaches_the_upstream(stack: Stack) -> None:
    """One slot, three prompts: the third, cancelled while it waits, is never created; the rest are."""
    ids = await create_many(stack.api, ["runs", "also runs", "taken back"])
    cancelled = await stack.api.post(f"/api/generations/{ids[2]}/cancel", headers=headers())
    assert cancelled.status == 200
    stack.start_worker(stack.pool({"sim-1": 1}))
    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert [record.state for record in found] == ["completed", "completed", "failed"]
    assert found[2].failure_reason == "cancelled"
    assert creates_per_prompt(stack.simulator) == {"runs": 1, "also runs": 1}
