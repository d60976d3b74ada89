"""Redis failover through Sentinel, with real processes: a primary, a replica, three sentinels."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import pytest

from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, creates_per_prompt, records, wait_all_terminal
from tests.fixtures.redis import SentinelCluster
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import Stack, headers, open_stack

# Between two creates of the steady stream: enough traffic to be mid-run when the primary dies,
# little enough for two accounts to keep up.
CREATE_EVERY_SECONDS = 0.05


class CreateStream:
    """Creates through the api one after another until stopped; remembers what each got."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            response = await self.stack.api.post(
                "/api/generations/create", json={"prompt": f"stream {n}"}, headers=headers()
            )
            body = await response.json()
            if response.status == 200:
                self.accepted.append(body["data"][0]["id"])
            else:
                assert response.status == 503, body
                self.refused[body["code"]] += 1
            n += 1
            # Pacing, not waiting for anything: a steady stream rather than a burst.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CREATE_EVERY_SECONDS)


@pytest.mark.timeout(120)
@simulator_with(pending_seconds=0.05, processing_seconds=0.3)
async def test_a_sentinel_failover_mid_run_loses_no_accepted_generation_and_creates_none_twice(
    sentinel_cluster: SentinelCluster, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """SIGKILL the primary mid-run: api and worker follow the promoted replica, every 2xx completes, once."""
    cluster = sentinel_cluster
    async with open_stack(
        simulator,
        # Through Sentinel the URL names only the database; its host is never used.
        "redis://unused.invalid:6379/0",
        tmp_path,
        REDIS_SENTINELS=cluster.sentinel_addresses,
        REDIS_SENTINEL_MASTER=cluster.master,
        REDIS_MIN_REPLICAS_ACKED=1,
    ) as stack:
        worker = stack.start_worker(stack.pool({"sim-1": 3, "sim-2": 3}))
        early = await create_many(stack.api, [f"early {n}" for n in range(10)])
        stream = CreateStream(stack)
        stream.start()

        async def some_completed() -> bool:
            return sum(record.state == "completed" for record in await records(stack.redis, early)) >= 3

        await wait_until(some_completed, within=60, interval=0.1)
        accepted_before_kill = len(stream.accepted)
        cluster.primary.kill()
        await wait_until(lambda: cluster.primary_port() == cluster.replica.port, within=60, interval=0.1)
        # The old primary comes back and Sentinel makes it the new primary's replica, so creates
        # can have their write confirmed on a replica again.
        cluster.primary.start()
        await wait_until(lambda: cluster.replicas_online(cluster.replica) >= 1, within=60, interval=0.1)
        accepted_at_rejoin = len(stream.accepted)
        await wait_until(lambda: len(stream.accepted) >= accepted_at_rejoin + 5, within=60, interval=0.1)
        await stream.stop()

        # The api followed: it accepted creates before, and again after, the failover.
        assert accepted_before_kill > 0
        assert set(stream.refused) <= {"redis_unavailable", "replication_unconfirmed"}, stream.refused
        accepted = early + stream.accepted
        found = await wait_all_terminal(stack.redis, accepted, within=60)
        unfinished = [(r.id, r.state, r.failure_message) for r in found if r.state != "completed"]
        assert [record.state for record in found] == ["completed"] * len(accepted), unfinished
        assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())
        # The worker followed: the one process that lived through the failover did all of it.
        assert worker.process.poll() is None
