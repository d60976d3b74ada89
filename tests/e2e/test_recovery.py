"""When infrastructure fails: a dead worker's generation moves again in seconds, and no accepted
generation waits forever."""

from __future__ import annotations

import time

import pytest

from shared.states import FailureReason
from simulator.config import AccountSpec
from tests.e2e.helpers import create_many, creates_per_prompt, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, Stack, headers

ONE_ACCOUNT = [AccountSpec(name="sim-1", token="sim-token-1")]
# arq would hand a dead worker's job on only after the longest job timeout plus 10 s: 130 s.
ARQ_EXPIRY_SECONDS = 130


@pytest.mark.parametrize("fault_point", ["before_create", "after_create"])
@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_killed_workers_generation_moves_again_long_before_arqs_expiry(
    fault_point: str, stack: Stack
) -> None:
    """SIGKILL around the paid create with production job timeouts: another worker takes it over
    as soon as the dead one's liveness lapses, and creates nothing twice."""
    pool = stack.pool({"sim-1": 1})
    production = {"SUBMIT_JOB_TIMEOUT_SECONDS": 120}
    crashing = stack.start_worker(pool, FAULT_POINT=fault_point, **production)
    [gen_id] = await create_many(stack.api, [f"taken over {fault_point}"])
    await wait_until(lambda: crashing.process.poll() is not None, within=30, interval=0.05)
    assert crashing.process.returncode == -9
    started = time.monotonic()
    stack.start_worker(pool, **production)

    [record] = await wait_all_terminal(stack.redis, [gen_id], within=ARQ_EXPIRY_SECONDS)
    # Generous (a loaded machine): the point is "seconds, not arq's two minutes".
    assert time.monotonic() - started < ARQ_EXPIRY_SECONDS / 3
    assert record.state == "completed"
    assert creates_per_prompt(stack.simulator) == {f"taken over {fault_point}": 1}


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=1.5)
async def test_with_no_usable_account_create_is_503_and_the_waiting_ones_fail_no_account(
    stack: Stack,
) -> None:
    """The only account is disabled: create refuses at once, waiting generations end with a reason."""
    stack.start_worker(stack.pool({"sim-1": 1}), NO_ACCOUNT_DEADLINE_SECONDS=2)
    running, *waiting = await create_many(stack.api, ["running", "waiting 1", "waiting 2"])

    async def started() -> bool:
        return bool(stack.simulator.state.generation_reports())

    await wait_until(started, within=20)
    disabled = await stack.api.patch(
        "/api/admin/accounts/sim-1", json={"enabled": False}, headers=headers(ADMIN_KEY)
    )
    assert disabled.status == 200

    refused = await stack.api.post("/api/generations/create", json={"prompt": "late"}, headers=headers())
    assert refused.status == 503
    assert (await refused.json())["code"] == "no_account_available"

    found = await wait_all_terminal(stack.redis, [running, *waiting], within=30)
    assert found[0].state == "completed", "what already runs upstream is followed to its end"
    assert [record.failure_reason for record in found[1:]] == [FailureReason.NO_ACCOUNT] * 2
    assert creates_per_prompt(stack.simulator) == {"running": 1}


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=2.0)
async def test_a_start_deadline_fails_a_generation_that_could_not_start_in_time(stack: Stack) -> None:
    """One slot, busy: the one with start_deadline_seconds=0.5 fails before reaching Luma; the next runs."""
    stack.start_worker(stack.pool({"sim-1": 1}))
    [busy] = await create_many(stack.api, ["busy"])
    await wait_until(lambda: bool(stack.simulator.state.generation_reports()), within=20)
    [hurried] = await create_many(stack.api, ["hurried"], start_deadline_seconds=0.5)
    [patient] = await create_many(stack.api, ["patient"])

    found = await wait_all_terminal(stack.redis, [busy, hurried, patient], within=60)
    assert [record.state for record in found] == ["completed", "failed", "completed"]
    assert found[1].failure_reason == FailureReason.START_DEADLINE_EXCEEDED
    assert "hurried" not in creates_per_prompt(stack.simulator)
