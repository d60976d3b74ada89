"""The /_sim control and observation endpoints."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import simulator_with, wait_until
from tests.simulator.client import ME, browser_headers, create


async def test_config_can_be_read_and_patched_at_run_time(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """GET shows the knobs (no account tokens); PATCH validates and changes the live config."""
    async with simulator_session.get(simulator.url + "/_sim/config") as response:
        config = await response.json()
    assert config["pending_seconds"] == 0.05 and "accounts" not in config
    async with simulator_session.patch(
        simulator.url + "/_sim/config", json={"pending_seconds": 9, "failure_rate": 0.5}
    ) as response:
        assert response.status == 200
        assert (await response.json())["pending_seconds"] == 9
    assert simulator.state.config.failure_rate == 0.5
    assert (await create(simulator_session, simulator))["state"] == "pending"


async def test_invalid_config_patch_is_422_and_changes_nothing(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """An out-of-range rate, an unknown knob or the accounts list are refused as a whole."""
    patches: list[dict[str, object]] = [
        {"error_rate": 2, "pending_seconds": 1},
        {"no_such_knob": 1},
        {"accounts": []},
    ]
    for patch in patches:
        async with simulator_session.patch(simulator.url + "/_sim/config", json=patch) as response:
            assert response.status == 422, patch
    assert simulator.state.config.pending_seconds == 0.05
    assert simulator.state.config.error_rate == 0.0


async def test_added_account_can_be_used_and_is_listed(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """POST /_sim/accounts adds an account whose token then authenticates; duplicates are 409."""
    body = {"name": "extra", "token": "extra-token", "capacity": 30}
    async with simulator_session.post(simulator.url + "/_sim/accounts", json=body) as response:
        assert response.status == 201
        assert (await response.json())["plan"] == "free"
    async with simulator_session.post(simulator.url + "/_sim/accounts", json=body) as response:
        assert response.status == 409
    await create(simulator_session, simulator, account="extra")
    async with simulator_session.get(simulator.url + "/_sim/accounts") as response:
        accounts = {a["name"]: a for a in await response.json()}
    assert accounts.keys() == {"sim-1", "sim-2", "sim-3", "extra"}
    assert accounts["extra"]["consumed"] == 1


async def test_control_call_on_unknown_account_is_404(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Expiring an account that does not exist answers 404."""
    async with simulator_session.post(simulator.url + "/_sim/accounts/nobody/expire") as response:
        assert response.status == 404


async def test_request_log_records_luma_traffic_and_can_be_cleared(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Each API request is logged with account, status and header presence; /_sim calls are not."""
    async with simulator_session.get(
        simulator.url + ME + "?x=1", headers=browser_headers(simulator)
    ) as response:
        assert response.status == 200
    async with simulator_session.get(simulator.url + ME) as response:
        assert response.status == 401
    async with simulator_session.get(simulator.url + "/_sim/requests") as response:
        log = await response.json()
    assert [(r["method"], r["path"], r["query"], r["account"], r["status"]) for r in log] == [
        ("GET", ME, "x=1", "sim-1", 200),
        ("GET", ME, "", None, 401),
    ]
    assert (log[0]["has_cookie"], log[0]["has_origin"], log[0]["has_referer"], log[0]["has_user_agent"]) == (
        True,
        True,
        True,
        True,
    )
    assert (log[1]["has_cookie"], log[1]["has_origin"]) == (False, False)
    assert log[0]["origin"] == "https://lumalabs.ai"
    async with simulator_session.delete(simulator.url + "/_sim/requests") as response:
        assert response.status == 200
    assert simulator.state.requests() == []


async def test_generation_report_has_timeline_and_outcome(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """/_sim/generations gives account, prompt and the instants processing started and it ended."""
    generation = await create(simulator_session, simulator, "a lighthouse", account="sim-2")

    async def finished() -> bool:
        async with simulator_session.get(simulator.url + "/_sim/generations?account=sim-2") as response:
            reports = await response.json()
        return reports[0]["finished_at"] is not None

    async with simulator_session.get(simulator.url + "/_sim/generations") as response:
        (report,) = await response.json()
    assert (report["id"], report["account"], report["prompt"]) == (generation["id"], "sim-2", "a lighthouse")
    assert report["finished_at"] is None and report["outcome"] is None
    await wait_until(finished)
    async with simulator_session.get(simulator.url + "/_sim/generations") as response:
        (report,) = await response.json()
    assert report["created_at"] < report["started_processing_at"] < report["finished_at"]
    assert report["finished_at"] - report["created_at"] == pytest.approx(0.25)
    assert report["outcome"] == "completed"


async def test_stats_track_in_flight_and_max_in_flight_per_account(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Three overlapping creates give max_in_flight 3; after they end, in_flight is 0 and max stays."""
    await asyncio.gather(*(create(simulator_session, simulator) for _ in range(3)))
    async with simulator_session.get(simulator.url + "/_sim/stats") as response:
        stats = (await response.json())["accounts"]
    assert (stats["sim-1"]["in_flight"], stats["sim-1"]["max_in_flight"], stats["sim-1"]["creates"]) == (
        3,
        3,
        3,
    )
    assert stats["sim-2"]["max_in_flight"] == 0

    def drained() -> bool:
        return simulator.state.in_flight(simulator.state.account("sim-1")) == 0

    await wait_until(drained)
    await create(simulator_session, simulator)
    assert simulator.state.account_stats()["sim-1"]["max_in_flight"] == 3
    assert simulator.state.account_stats()["sim-1"]["in_flight"] == 1


@simulator_with(request_log_limit=3)
async def test_request_log_keeps_only_the_newest_entries(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """The log is a ring of request_log_limit entries, so long benchmarks cannot exhaust memory."""
    for i in range(5):
        async with simulator_session.get(f"{simulator.url}{ME}?n={i}", headers=browser_headers(simulator)):
            pass
    assert [r.query for r in simulator.state.requests()] == ["n=2", "n=3", "n=4"]
