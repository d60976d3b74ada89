"""Subscription usage, the monthly limit, and the current user."""

from __future__ import annotations

import aiohttp

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import simulator_with
from tests.simulator.client import CREATE, ME, USAGE, browser_headers, call, create


async def test_usage_has_counts_subscription_and_four_plans(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Usage reports consumed/capacity/available, the subscription and the plan table."""
    body = await call(simulator_session, simulator, "GET", USAGE)
    assert (body["consumed"], body["capacity"], body["available"]) == (0, 150, 150)
    assert body["subscription"] == {"active": True, "plan": "standard", "type": "monthly"}
    assert [(p["name"], p["key"], p["capacity_per_month"]) for p in body["plans"]] == [
        ("Free", "free", 30),
        ("Standard", "standard", 150),
        ("Pro", "pro", 430),
        ("Premier", "premier", 2030),
    ]
    for plan in body["plans"]:
        assert isinstance(plan["monthly_cost_in_cents"], float)
        assert isinstance(plan["yearly_cost_in_cents"], float)


async def test_each_create_consumes_one_unit_of_its_own_account(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Usage counts down by one per create, on the creating account only."""
    await create(simulator_session, simulator)
    await create(simulator_session, simulator)
    mine, other = (
        await call(simulator_session, simulator, "GET", USAGE),
        await call(simulator_session, simulator, "GET", USAGE, "sim-2"),
    )
    assert (mine["consumed"], mine["available"]) == (2, 148)
    assert (other["consumed"], other["available"]) == (0, 150)


@simulator_with(accounts=[("sim-1", "sim-token-1", 2)])
async def test_create_when_spent_is_403_limit_exceeded_and_creates_nothing(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """At available 0 create answers 403 Maximum usage limit exceeded and is counted as rejected."""
    await create(simulator_session, simulator)
    await create(simulator_session, simulator)
    assert (await call(simulator_session, simulator, "GET", USAGE))["available"] == 0
    async with simulator_session.post(
        simulator.url + CREATE, json={"user_prompt": "one too many"}, headers=browser_headers(simulator)
    ) as response:
        assert response.status == 403
        assert await response.json() == {"detail": {"reason": "Maximum usage limit exceeded"}}
    assert len(simulator.state.generations) == 2
    stats = simulator.state.account_stats()["sim-1"]
    assert (stats["creates"], stats["rejected_create_after_spent"], stats["consumed"]) == (2, 1, 2)


async def test_capacity_control_call_changes_usage_and_plan(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """POST /_sim/accounts/{name}/capacity sets capacity and consumed; a plan's size names the plan."""
    async with simulator_session.post(
        simulator.url + "/_sim/accounts/sim-1/capacity", json={"capacity": 430, "consumed": 400}
    ) as response:
        assert response.status == 200
    body = await call(simulator_session, simulator, "GET", USAGE)
    assert (body["consumed"], body["capacity"], body["available"]) == (400, 430, 30)
    assert body["subscription"]["plan"] == "pro"


async def test_me_returns_the_accounts_user(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """GET /api/users/v1/me answers a user object with a stable id per account."""
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 200
        user = await response.json()
    assert {"id", "email", "name"} <= user.keys()
    assert user["name"] == "sim-1"
    assert user["id"] == simulator.state.account("sim-1").user_id != simulator.state.account("sim-2").user_id
