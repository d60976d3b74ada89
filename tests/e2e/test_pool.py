"""The account pool under real worker processes: limits, capacity, order, crashes, expiry."""

from __future__ import annotations

import time

from shared import keys
from simulator.config import AccountSpec
from tests.e2e.helpers import (
    create_many,
    creates_per_prompt,
    max_in_flight,
    records,
    wait_all_terminal,
)
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, TEST_KEYS, Stack, headers

LIMITS = {"sim-1": 1, "sim-2": 2, "sim-3": 3}
SMALL_CAPACITY = 30


@simulator_with(
    accounts=[
        AccountSpec(name="sim-1", token="sim-token-1"),
        AccountSpec(name="sim-2", token="sim-token-2"),
        AccountSpec(name="sim-3", token="sim-token-3", capacity=SMALL_CAPACITY),
    ],
    pending_seconds=0.02,
    processing_seconds=0.15,
)
async def test_three_workers_fill_three_accounts_without_overdrawing_any(stack: Stack) -> None:
    """200 generations on limits 1/2/3: all complete, no limit or capacity exceeded, FIFO per holder."""
    pool = stack.pool(LIMITS)
    for _ in range(3):
        stack.start_worker(pool)
    alice = await create_many(stack.api, [f"alice {n}" for n in range(140)], key=TEST_KEYS[0])
    bob = await create_many(stack.api, [f"bob {n}" for n in range(60)], key=TEST_KEYS[1])

    done = await wait_all_terminal(stack.redis, alice + bob, within=120)
    assert [record.state for record in done] == ["completed"] * 200
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())
    peaks = max_in_flight(stack.simulator)
    assert all(peaks[name] <= limit for name, limit in LIMITS.items()), peaks
    assert peaks["sim-3"] == LIMITS["sim-3"], "the pool should have kept the biggest account full"
    stats = stack.simulator.state.account_stats()
    assert all(account["rejected_create_after_spent"] == 0 for account in stats.values()), stats
    assert stats["sim-3"]["creates"] == SMALL_CAPACITY
    for holder in (alice, bob):
        holder_records = {record.id: record for record in done if record.id in set(holder)}
        seqs = [holder_records[gen_id].dispatch_seq for gen_id in holder]
        assert seqs == sorted(seqs), "generations of one key holder must start in submission order"
    # Round-robin: bob's first generation did not wait behind all of alice's.
    first_bob = min(record.dispatch_seq or 0 for record in done if record.id in set(bob))
    assert first_bob < 140


@simulator_with(
    accounts=[AccountSpec(name="sim-1", token="sim-token-1")],
    pending_seconds=0.02,
    processing_seconds=0.2,
    slow_rate=1.0,
    slow_seconds=0.3,
)
async def test_slots_held_by_a_killed_worker_come_back_and_the_work_completes(stack: Stack) -> None:
    """SIGKILL a worker mid-submit: its leases free up, another worker finishes every generation."""
    pool = stack.pool({"sim-1": 2})
    first = stack.start_worker(pool)
    ids = await create_many(stack.api, [f"crash {n}" for n in range(8)])

    async def leases_held() -> bool:
        return bool(await stack.redis.zcard(keys.leases("sim-1")))

    await wait_until(leases_held, within=15)
    first.kill()
    held_at_kill = await stack.redis.zcard(keys.leases("sim-1"))
    assert held_at_kill > 0
    stack.start_worker(pool)

    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert [record.state for record in found] == ["completed"] * 8
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())
    assert max_in_flight(stack.simulator)["sim-1"] <= 2

    async def slots_free() -> bool:
        return not await stack.redis.zcard(keys.leases("sim-1"))

    await wait_until(slots_free, within=10)


@simulator_with(pending_seconds=0.05, processing_seconds=0.6)
async def test_an_expired_account_hands_its_work_to_the_others(stack: Stack) -> None:
    """A 401 marks the account expired (the admin API says so) and new work goes elsewhere."""
    stack.start_worker(stack.pool({"sim-1": 2, "sim-2": 2, "sim-3": 2}))
    ids = await create_many(stack.api, [f"expiry {n}" for n in range(30)])

    async def some_completed() -> bool:
        return sum(record.state == "completed" for record in await records(stack.redis, ids)) >= 6

    await wait_until(some_completed, within=30)
    stack.simulator.state.expire_account("sim-1")
    expired_at = time.time()

    async def admin_shows_expired() -> bool:
        response = await stack.api.get("/api/admin/accounts", headers=headers(ADMIN_KEY))
        rows = {row["name"]: row for row in (await response.json())["data"]}
        return bool(rows["sim-1"]["state"] == "expired")

    await wait_until(admin_shows_expired, within=15)

    async def others_finished() -> bool:
        found = await records(stack.redis, ids)
        return all(record.terminal or record.account == "sim-1" for record in found)

    await wait_until(others_finished, within=60, interval=0.2)
    late_creates = [
        report
        for report in stack.simulator.state.generation_reports("sim-1")
        if report["created_at"] > expired_at + 0.5
    ]
    assert late_creates == []

    # The operator gives the account a new session; what was running there is read again.
    stack.simulator.state.set_token("sim-1", "sim-token-1-renewed")
    response = await stack.api.patch(
        "/api/admin/accounts/sim-1", json={"cookie": "sim-token-1-renewed"}, headers=headers(ADMIN_KEY)
    )
    assert response.status == 200, await response.text()

    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert [record.state for record in found] == ["completed"] * 30
    assert all(count == 1 for count in creates_per_prompt(stack.simulator).values())


@simulator_with(pending_seconds=0.02, processing_seconds=0.3)
async def test_accounts_added_and_disabled_at_run_time_change_where_work_goes(stack: Stack) -> None:
    """An account added through the admin API takes work at once; a disabled one takes no more."""
    stack.start_worker(stack.pool({"sim-1": 1}))
    ids = await create_many(stack.api, [f"grow {n}" for n in range(12)])
    added = await stack.api.post(
        "/api/admin/accounts",
        json={
            "name": "sim-2",
            "cookie": stack.simulator.state.account("sim-2").token,
            "base_url": stack.simulator.url,
            "max_concurrency": 3,
        },
        headers=headers(ADMIN_KEY),
    )
    assert added.status == 201, await added.text()
    await wait_until(lambda: len(stack.simulator.state.generation_reports("sim-2")) >= 3, within=15)
    disabled = await stack.api.patch(
        "/api/admin/accounts/sim-1", json={"enabled": False}, headers=headers(ADMIN_KEY)
    )
    assert disabled.status == 200
    creates_on_sim1 = len(stack.simulator.state.generation_reports("sim-1"))

    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert [record.state for record in found] == ["completed"] * 12
    # A create already claimed when the switch came may still land; nothing after it.
    assert len(stack.simulator.state.generation_reports("sim-1")) <= creates_on_sim1 + 1
    assert max_in_flight(stack.simulator)["sim-2"] <= 3
