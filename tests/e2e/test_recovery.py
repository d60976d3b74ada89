"""When infrastructure fails: a dead worker's generation moves again in seconds, and no accepted
generation waits forever."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.states import FailureReason
from simulator.config import AccountSpec
from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, creates_per_prompt, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, WorkerProcess, accounts_for, headers

ONE_ACCOUNT = [AccountSpec(name="sim-1", token="sim-token-1")]
# arq would hand a dead worker's job on only after the longest job timeout plus 10 s: 130 s.
ARQ_EXPIRY_SECONDS = 130


@pytest.mark.parametrize("fault_point", ["before_create", "after_create"])
@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_killed_workers_generation_moves_again_long_before_arqs_expiry(
    fault_point: str,
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """SIGKILL around the paid create with production job timeouts: another worker takes it over
    as soon as the dead one's liveness lapses, and creates nothing twice."""
    pool = accounts_for(simulator, {"sim-1": 1})
    production = {"SUBMIT_JOB_TIMEOUT_SECONDS": 120}
    crashing = start_worker(pool, FAULT_POINT=fault_point, **production)
    [gen_id] = await create_many(api_client, [f"taken over {fault_point}"])
    await wait_until(lambda: crashing.process.poll() is not None, within=30, interval=0.05)
    assert crashing.process.returncode == -9
    started = time.monotonic()
    start_worker(pool, **production)

    [record] = await wait_all_terminal(redis, [gen_id], within=ARQ_EXPIRY_SECONDS)
    # Generous (a loaded machine): the point is "seconds, not arq's two minutes".
    assert time.monotonic() - started < ARQ_EXPIRY_SECONDS / 3
    assert record.state == "completed"
    assert creates_per_prompt(simulator) == {f"taken over {fault_point}": 1}


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=1.5)
async def test_with_no_usable_account_create_is_503_and_the_waiting_ones_fail_no_account(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """The only account is disabled: create refuses at once, waiting generations end with a reason."""
    start_worker(accounts_for(simulator, {"sim-1": 1}), NO_ACCOUNT_DEADLINE_SECONDS=2)
    running, *waiting = await create_many(api_client, ["running", "waiting 1", "waiting 2"])

    async def started() -> bool:
        return bool(simulator.state.generation_reports())

    await wait_until(started, within=20)
    disabled = await api_client.patch(
        "/api/admin/accounts/sim-1", json={"enabled": False}, headers=headers(ADMIN_KEY)
    )
    assert disabled.status == 200

    refused = await api_client.post("/api/generations/create", json={"prompt": "late"}, headers=headers())
    assert refused.status == 503
    assert (await refused.json())["code"] == "no_account_available"

    found = await wait_all_terminal(redis, [running, *waiting], within=30)
    assert found[0].state == "completed", "what already runs upstream is followed to its end"
    assert [record.failure_reason for record in found[1:]] == [FailureReason.NO_ACCOUNT] * 2
    assert creates_per_prompt(simulator) == {"running": 1}


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=2.0)
async def test_a_start_deadline_fails_a_generation_that_could_not_start_in_time(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """One slot, busy: the one with start_deadline_seconds=0.5 fails before reaching Luma; the next runs."""
    start_worker(accounts_for(simulator, {"sim-1": 1}))
    [busy] = await create_many(api_client, ["busy"])
    await wait_until(lambda: bool(simulator.state.generation_reports()), within=20)
    [hurried] = await create_many(api_client, ["hurried"], start_deadline_seconds=0.5)
    [patient] = await create_many(api_client, ["patient"])

    found = await wait_all_terminal(redis, [busy, hurried, patient], within=60)
    assert [record.state for record in found] == ["completed", "failed", "completed"]
    assert found[1].failure_reason == FailureReason.START_DEADLINE_EXCEEDED
    assert "hurried" not in creates_per_prompt(simulator)
