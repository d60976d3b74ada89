"""Crash, restart and upstream-fault safety, with real processes: nothing lost, nothing paid twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cli.redis_server import RedisServer
from shared.models import FailureReason
from simulator.config import AccountSpec
from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, creates_per_prompt, records, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import FAST_WORKER_SETTINGS, Stack, headers, open_stack

# Short job timeouts so arq hands a dead worker's job to another within seconds.
CRASH_SETTINGS = {"SUBMIT_JOB_TIMEOUT_SECONDS": 2, "UPLOAD_TIMEOUT_SECONDS": 2}
ONE_ACCOUNT = [AccountSpec(name="sim-1", token="sim-token-1")]
# What a worker logs when it finds Redis gone: a background loop's failure, or arq's own.
REDIS_UNAVAILABLE_EVENTS = ("loop_redis_unavailable", "redis_unavailable_retrying")


def settled(found: list[Any]) -> bool:
    """Completed, or failed only with the reason that says we refused to risk a second create."""
    return all(
        record.state == "completed"
        or (record.state == "failed" and record.failure_reason == FailureReason.INDETERMINATE_CREATE)
        for record in found
    )


@pytest.mark.parametrize("fault_point", ["before_create", "after_create"])
@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_worker_killed_around_the_create_never_creates_twice(fault_point: str, stack: Stack) -> None:
    """SIGKILL right before or right after the paid call: a restarted worker settles it, once."""
    # One slot: the crash comes with exactly one create started, not several in parallel.
    pool = stack.pool({"sim-1": 1})
    crashing = stack.start_worker(pool, FAULT_POINT=fault_point, **CRASH_SETTINGS)
    ids = await create_many(stack.api, [f"{fault_point} {n}" for n in range(4)])
    await wait_until(lambda: crashing.process.poll() is not None, within=20)
    assert crashing.process.returncode == -9
    if fault_point == "after_create":
        assert len(stack.simulator.state.generation_reports()) == 1, "the crash came after exactly one create"
    stack.start_worker(pool, **CRASH_SETTINGS)

    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert settled(found), [(record.state, record.failure_message) for record in found]
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())
    if fault_point == "after_create":
        # The create that the dead worker made was found and adopted, not made again.
        assert [record.state for record in found] == ["completed"] * 4


@simulator_with(
    accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2, hang_after_create_seconds=30
)
async def test_a_worker_killed_while_the_create_is_in_flight_adopts_it_after_restart(stack: Stack) -> None:
    """The upstream made the generation but the answer never came back: it is adopted, not redone."""
    pool = stack.pool({"sim-1": 1})
    first = stack.start_worker(pool, **CRASH_SETTINGS)
    [gen_id] = await create_many(stack.api, ["in flight"])
    await wait_until(lambda: len(stack.simulator.state.generation_reports()) == 1, within=15)
    first.kill()
    stack.simulator.state.update_config({"hang_after_create_seconds": 0})
    stack.start_worker(pool, **CRASH_SETTINGS)

    [record] = await wait_all_terminal(stack.redis, [gen_id], within=60)
    assert record.state == "completed"
    assert creates_per_prompt(stack.simulator) == {"in flight": 1}


@simulator_with(pending_seconds=0.05, processing_seconds=0.5)
async def test_redis_killed_and_restarted_mid_run_loses_no_accepted_generation(
    stack_on_fresh_redis: Stack,
) -> None:
    """SIGKILL redis-server (AOF on) in a 100-generation run: every accepted one still completes."""
    stack, server = stack_on_fresh_redis, stack_on_fresh_redis.redis_server
    assert server is not None
    pool = stack.pool({"sim-1": 3, "sim-2": 3, "sim-3": 3})
    workers = [stack.start_worker(pool), stack.start_worker(pool)]
    ids = await create_many(stack.api, [f"redis outage {n}" for n in range(100)])

    async def some_completed() -> bool:
        return sum(record.state == "completed" for record in await records(stack.redis, ids)) >= 20

    await wait_until(some_completed, within=60, interval=0.2)
    noticed_before = [len(worker.events(*REDIS_UNAVAILABLE_EVENTS)) for worker in workers]
    server.kill()
    during = await stack.api.post(
        "/api/generations/create", json={"prompt": "while redis is down"}, headers=headers()
    )
    assert during.status == 503
    assert (await during.json())["code"] == "redis_unavailable"

    def every_worker_noticed() -> bool:
        return all(
            len(worker.events(*REDIS_UNAVAILABLE_EVENTS)) > before
            for worker, before in zip(workers, noticed_before, strict=True)
        )

    # The outage lasts until every worker has met it, so that each one has to recover.
    await wait_until(every_worker_noticed, within=30, interval=0.1)
    server.start()

    found = await wait_all_terminal(stack.redis, ids, within=120)
    assert settled(found), [(r.state, r.failure_message) for r in found if r.state != "completed"]
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())
    assert "while redis is down" not in creates_per_prompt(stack.simulator)


# The shortest socket timeout the blocking calls allow keeps the frozen-Redis test quick; the bound
# on an answer is generous (twice the timeout, plus room for a busy machine): a sanity limit, not a
# measurement.
FROZEN_TIMEOUT_SECONDS = 1.5
FROZEN_ANSWER_WITHIN_SECONDS = 2 * FROZEN_TIMEOUT_SECONDS + 2.0


@simulator_with(pending_seconds=0.05, processing_seconds=0.3)
async def test_a_frozen_redis_is_a_fast_503_and_service_resumes_when_it_thaws(
    fresh_redis_server: RedisServer, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SIGSTOP redis-server: each request is a prompt 503; after SIGCONT the same worker completes work."""
    async with open_stack(
        simulator,
        fresh_redis_server.url,
        tmp_path,
        REDIS_SOCKET_TIMEOUT_SECONDS=FROZEN_TIMEOUT_SECONDS,
        DISPATCH_IDLE_SECONDS=FAST_WORKER_SETTINGS["DISPATCH_IDLE_SECONDS"],
    ) as stack:
        worker = stack.start_worker(stack.pool({"sim-1": 2}))
        [before] = await create_many(stack.api, ["before the freeze"])
        [record] = await wait_all_terminal(stack.redis, [before], within=30)
        assert record.state == "completed"
        noticed_before = len(worker.events(*REDIS_UNAVAILABLE_EVENTS))

        fresh_redis_server.freeze()
        try:
            for method, path, body in [
                ("POST", "/api/generations/create", {"prompt": "while redis is frozen"}),
                ("GET", f"/api/generations/{before}", None),
                ("GET", "/api/generations", None),
                ("GET", "/api/generations/usage", None),
                ("GET", "/healthz", None),
            ]:
                started = time.monotonic()
                response = await stack.api.request(method, path, json=body, headers=headers())
                took = time.monotonic() - started
                answer = await response.json()
                assert response.status == 503, path
                assert answer["code"] == "redis_unavailable", path
                assert took < FROZEN_ANSWER_WITHIN_SECONDS, (path, took)
                if method == "POST":
                    # Its command was sent before the timeout: a thawed Redis may still carry it out.
                    assert "may or may not have taken effect" in answer["message"]

            # The worker meets the freeze as a timeout, not a call that never returns.
            def worker_noticed() -> bool:
                return len(worker.events(*REDIS_UNAVAILABLE_EVENTS)) > noticed_before

            await wait_until(worker_noticed, within=30, interval=0.1)
        finally:
            fresh_redis_server.thaw()

        [after] = await create_many(stack.api, ["after the thaw"])
        [record] = await wait_all_terminal(stack.redis, [after], within=60)
        assert record.state == "completed"
        assert worker.process.poll() is None, "the worker that lived through the freeze did the work"
        assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())


@simulator_with(pending_seconds=0.05, processing_seconds=0.3)
async def test_upstream_outage_errors_and_slowness_are_absorbed(stack: Stack) -> None:
    """Connection refused, then 5xx bursts, then slow answers: every generation still completes."""
    worker = stack.start_worker(stack.pool({"sim-1": 2, "sim-2": 2}))
    ids = await create_many(stack.api, [f"weather {n}" for n in range(24)])

    async def some_completed() -> bool:
        return sum(record.state == "completed" for record in await records(stack.redis, ids)) >= 4

    def refused() -> int:
        return sum(event.get("error") == "RequestNotSent" for event in worker.events("luma.retry"))

    await wait_until(some_completed, within=30)
    refused_before = refused()
    await stack.simulator.stop()
    # Down until the worker's retries have been refused a few times, not for a guessed while.
    await wait_until(lambda: refused() >= refused_before + 3, within=30, interval=0.1)
    await stack.simulator.start()
    errors_before = stack.simulator.state.faults_injected["error"]
    stack.simulator.state.update_config({"error_rate": 0.3})
    await wait_until(lambda: stack.simulator.state.faults_injected["error"] >= errors_before + 3, within=30)
    stack.simulator.state.update_config({"error_rate": 0.0, "slow_rate": 0.5, "slow_seconds": 0.5})

    found = await wait_all_terminal(stack.redis, ids, within=90)
    assert [record.state for record in found] == ["completed"] * 24, [r.failure_message for r in found]
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())


@simulator_with(pending_seconds=0.05, processing_seconds=0.4, slow_rate=1.0, slow_seconds=0.2)
async def test_sigterm_stops_a_worker_cleanly_and_another_finishes_the_run(stack: Stack) -> None:
    """SIGTERM mid-run: exit 0 within the grace period; a new worker completes it with no duplicate."""
    pool = stack.pool({"sim-1": 3, "sim-2": 3})
    first = stack.start_worker(pool, SHUTDOWN_GRACE_SECONDS=2)
    ids = await create_many(stack.api, [f"sigterm {n}" for n in range(30)])

    async def some_created() -> bool:
        return len(stack.simulator.state.generation_reports()) >= 6

    await wait_until(some_created, within=30)
    started = time.monotonic()
    assert first.terminate(within=15) == 0
    assert time.monotonic() - started < 10
    stack.start_worker(pool)

    found = await wait_all_terminal(stack.redis, ids, within=90)
    assert settled(found)
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_create_answered_with_an_error_is_checked_and_made_once(stack: Stack) -> None:
    """A 503 on create: the list shows nothing was made, so the create is made again, exactly once."""
    stack.simulator.state.fail_next(503, count=2, path_contains="/generations/", method="POST")
    stack.start_worker(stack.pool({"sim-1": 1}))
    [gen_id] = await create_many(stack.api, ["answered with an error"])
    [record] = await wait_all_terminal(stack.redis, [gen_id], within=30)
    assert record.state == "completed"
    assert record.submit_attempts == 3
    assert creates_per_prompt(stack.simulator) == {"answered with an error": 1}
