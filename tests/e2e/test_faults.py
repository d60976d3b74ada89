"""Crash, restart and upstream-fault safety, with real processes: nothing lost, nothing paid twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from cli.redis_server import RedisServer
from shared.models import FailureReason
from simulator.config import AccountSpec
from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, creates_per_prompt, records, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import WorkerProcess, accounts_for, api_settings, headers

# Short job timeouts so arq hands a dead worker's job to another within seconds.
CRASH_SETTINGS = {"SUBMIT_JOB_TIMEOUT_SECONDS": 2, "UPLOAD_TIMEOUT_SECONDS": 2}
ONE_ACCOUNT = [AccountSpec(name="sim-1", token="sim-token-1")]


def settled(found: list[Any]) -> bool:
    """Completed, or failed only with the reason that says we refused to risk a second create."""
    return all(
        record.state == "completed"
        or (record.state == "failed" and record.failure_reason == FailureReason.INDETERMINATE_CREATE)
        for record in found
    )


@pytest.mark.parametrize("fault_point", ["before_create", "after_create"])
@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_worker_killed_around_the_create_never_creates_twice(
    fault_point: str,
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """SIGKILL right before or right after the paid call: a restarted worker settles it, once."""
    # One slot: the crash comes with exactly one create started, not several in parallel.
    pool = accounts_for(simulator, {"sim-1": 1})
    crashing = start_worker(pool, FAULT_POINT=fault_point, **CRASH_SETTINGS)
    ids = await create_many(api_client, [f"{fault_point} {n}" for n in range(4)])
    await wait_until(lambda: crashing.process.poll() is not None, within=20)
    assert crashing.process.returncode == -9
    if fault_point == "after_create":
        assert len(simulator.state.generation_reports()) == 1, "the crash came after exactly one create"
    start_worker(pool, **CRASH_SETTINGS)

    found = await wait_all_terminal(redis, ids, within=60)
    assert settled(found), [(record.state, record.failure_message) for record in found]
    assert all(count == 1 for count in creates_per_prompt(simulator).values())
    if fault_point == "after_create":
        # The create that the dead worker made was found and adopted, not made again.
        assert [record.state for record in found] == ["completed"] * 4


@simulator_with(
    accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2, hang_after_create_seconds=30
)
async def test_a_worker_killed_while_the_create_is_in_flight_adopts_it_after_restart(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """The upstream made the generation but the answer never came back: it is adopted, not redone."""
    pool = accounts_for(simulator, {"sim-1": 1})
    first = start_worker(pool, **CRASH_SETTINGS)
    [gen_id] = await create_many(api_client, ["in flight"])
    await wait_until(lambda: len(simulator.state.generation_reports()) == 1, within=15)
    first.kill()
    simulator.state.update_config({"hang_after_create_seconds": 0})
    start_worker(pool, **CRASH_SETTINGS)

    [record] = await wait_all_terminal(redis, [gen_id], within=60)
    assert record.state == "completed"
    assert creates_per_prompt(simulator) == {"in flight": 1}


@pytest_asyncio.fixture
async def api_on_fresh_redis(fresh_redis_server: RedisServer) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(api_settings(fresh_redis_server.url))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@simulator_with(pending_seconds=0.05, processing_seconds=0.5)
async def test_redis_killed_and_restarted_mid_run_loses_no_accepted_generation(
    api_on_fresh_redis: TestClient[Any, Any],
    fresh_redis_server: RedisServer,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """SIGKILL redis-server (AOF on) in a 100-generation run: every accepted one still completes."""
    pool = accounts_for(simulator, {"sim-1": 3, "sim-2": 3, "sim-3": 3})
    start_worker(pool, REDIS_URL=fresh_redis_server.url)
    start_worker(pool, REDIS_URL=fresh_redis_server.url)
    ids = await create_many(api_on_fresh_redis, [f"redis outage {n}" for n in range(100)])
    redis = Redis.from_url(fresh_redis_server.url)
    try:

        async def some_completed() -> bool:
            return sum(record.state == "completed" for record in await records(redis, ids)) >= 20

        await wait_until(some_completed, within=60, interval=0.2)
        await redis.aclose()
        fresh_redis_server.kill()
        during = await api_on_fresh_redis.post(
            "/api/generations/create", json={"prompt": "while redis is down"}, headers=headers()
        )
        assert during.status == 503
        assert (await during.json())["code"] == "redis_unavailable"
        await _pause(1.0)  # an outage long enough for every worker to notice
        fresh_redis_server.start()
        redis = Redis.from_url(fresh_redis_server.url)

        found = await wait_all_terminal(redis, ids, within=120)
        assert settled(found), [(r.state, r.failure_message) for r in found if r.state != "completed"]
        assert all(count == 1 for count in creates_per_prompt(simulator).values())
        assert "while redis is down" not in creates_per_prompt(simulator)
    finally:
        await redis.aclose()


@simulator_with(pending_seconds=0.05, processing_seconds=0.3)
async def test_upstream_outage_errors_and_slowness_are_absorbed(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """Connection refused, then 5xx bursts, then slow answers: every generation still completes."""
    start_worker(accounts_for(simulator, {"sim-1": 2, "sim-2": 2}))
    ids = await create_many(api_client, [f"weather {n}" for n in range(24)])

    async def some_completed() -> bool:
        return sum(record.state == "completed" for record in await records(redis, ids)) >= 4

    await wait_until(some_completed, within=30)
    await simulator.stop()
    await _pause(2.0)
    await simulator.start()
    simulator.state.update_config({"error_rate": 0.3})
    await _pause(2.0)
    simulator.state.update_config({"error_rate": 0.0, "slow_rate": 0.5, "slow_seconds": 0.5})

    found = await wait_all_terminal(redis, ids, within=90)
    assert [record.state for record in found] == ["completed"] * 24, [r.failure_message for r in found]
    assert all(count == 1 for count in creates_per_prompt(simulator).values())


@simulator_with(pending_seconds=0.05, processing_seconds=0.4, slow_rate=1.0, slow_seconds=0.2)
async def test_sigterm_stops_a_worker_cleanly_and_another_finishes_the_run(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """SIGTERM mid-run: exit 0 within the grace period; a new worker completes it with no duplicate."""
    pool = accounts_for(simulator, {"sim-1": 3, "sim-2": 3})
    first = start_worker(pool, SHUTDOWN_GRACE_SECONDS=2)
    ids = await create_many(api_client, [f"sigterm {n}" for n in range(30)])

    async def some_created() -> bool:
        return len(simulator.state.generation_reports()) >= 6

    await wait_until(some_created, within=30)
    started = time.monotonic()
    assert first.terminate(within=15) == 0
    assert time.monotonic() - started < 10
    start_worker(pool)

    found = await wait_all_terminal(redis, ids, within=90)
    assert settled(found)
    assert all(count == 1 for count in creates_per_prompt(simulator).values())


async def _pause(seconds: float) -> None:
    """Let time pass while the simulator (in this event loop) keeps serving."""
    await asyncio.sleep(seconds)


@simulator_with(accounts=ONE_ACCOUNT, pending_seconds=0.02, processing_seconds=0.2)
async def test_a_create_answered_with_an_error_is_checked_and_made_once(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """A 503 on create: the list shows nothing was made, so the create is made again, exactly once."""
    simulator.state.fail_next(503, count=2, path_contains="/generations/", method="POST")
    start_worker(accounts_for(simulator, {"sim-1": 1}))
    [gen_id] = await create_many(api_client, ["answered with an error"])
    [record] = await wait_all_terminal(redis, [gen_id], within=30)
    assert record.state == "completed"
    assert record.submit_attempts == 3
    assert creates_per_prompt(simulator) == {"answered with an error": 1}
