"""Injected faults: scripted (fail_next) and random (error, slow, malformed)."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import simulator_with
from tests.simulator.client import CREATE, ME, USAGE, browser_headers, create


async def post_create(session: aiohttp.ClientSession, sim: RunningSimulator) -> int:
    async with session.post(
        sim.url + CREATE, json={"user_prompt": "x"}, headers=browser_headers(sim)
    ) as response:
        return response.status


async def test_fail_next_answers_next_creates_with_status_and_creates_nothing(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """fail_next(503, 2) on creates answers 503 twice without creating, then creates normally."""
    simulator.state.fail_next(503, 2, path_contains="/generations/", method="POST")
    assert [await post_create(simulator_session, simulator) for _ in range(3)] == [503, 503, 201]
    assert len(simulator.state.generations) == 1
    assert simulator.state.account("sim-1").consumed == 1
    faults = [r.fault for r in simulator.state.requests(path_contains="/generations/")]
    assert faults == ["scripted", "scripted", None]


async def test_fail_next_over_http_with_retry_after_applies_to_matching_path_only(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """POST /_sim/fail_next scripts a 429 with Retry-After on usage; other paths are untouched."""
    async with simulator_session.post(
        simulator.url + "/_sim/fail_next",
        json={"status": 429, "path_contains": "/subscription/usage", "headers": {"Retry-After": "1"}},
    ) as response:
        assert response.status == 201
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 200
    async with simulator_session.get(simulator.url + USAGE, headers=browser_headers(simulator)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert await response.json() == {"detail": "Too Many Requests"}
        assert "Set-Cookie" not in response.headers
    async with simulator_session.get(simulator.url + USAGE, headers=browser_headers(simulator)) as response:
        assert response.status == 200


async def test_fail_next_with_custom_body_and_clear(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A scripted body is sent verbatim; DELETE /_sim/fail_next drops what is still queued."""
    simulator.state.fail_next(403, 1, body={"detail": {"reason": "Too many concurrent generations"}})
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 403
        assert await response.json() == {"detail": {"reason": "Too many concurrent generations"}}
    simulator.state.fail_next(500, 5)
    async with simulator_session.delete(simulator.url + "/_sim/fail_next") as response:
        assert response.status == 200
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 200


@simulator_with(error_rate=1.0)
async def test_error_rate_one_answers_5xx_with_a_body_and_creates_nothing(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Every API request answers 500, 502 or 503 with a non-empty body; nothing is created."""
    statuses = set()
    for _ in range(20):
        async with simulator_session.post(
            simulator.url + CREATE, json={"user_prompt": "x"}, headers=browser_headers(simulator)
        ) as response:
            statuses.add(response.status)
            assert await response.read()
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert simulator.state.generations == {}
    assert simulator.state.faults_injected["error"] == 20


@simulator_with(malformed_rate=1.0)
async def test_malformed_rate_one_answers_200_with_a_body_that_is_not_json(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A malformed answer is a 200 that fails JSON decoding, and a create behind it creates nothing."""
    async with simulator_session.post(
        simulator.url + CREATE, json={"user_prompt": "x"}, headers=browser_headers(simulator)
    ) as response:
        assert response.status == 200
        text = await response.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert simulator.state.generations == {}


@simulator_with(slow_rate=1.0, slow_seconds=0.3)
async def test_slow_rate_delays_api_answers_but_not_control_or_storage(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Slow requests answer normally after slow_seconds; /_sim and media paths are never slowed."""
    started = time.monotonic()
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    async with simulator_session.get(simulator.url + "/_sim/stats") as response:
        assert response.status == 200
        assert (await response.json())["faults_injected"] == {"slow": 1}
    assert time.monotonic() - started < 0.3


@simulator_with(error_rate=1.0, malformed_rate=1.0)
async def test_random_faults_leave_control_and_storage_paths_alone(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Faults apply to /api/ only: control calls and the bucket keep working."""
    account = simulator.state.account("sim-1")
    upload = simulator.state.sign_upload(account, "image", "file.jpg")
    async with simulator_session.put(
        f"{simulator.url}/_storage/upload/{upload.id}?X-Amz-Signature={upload.signature}",
        data=b"\xff\xd8",
        headers={"Content-Type": "image/jpeg"},
    ) as response:
        assert response.status == 200
    async with simulator_session.get(simulator.url + "/_sim/config") as response:
        assert (await response.json())["error_rate"] == 1.0


async def test_fault_rates_can_be_changed_at_run_time(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """PATCH /_sim/config error_rate=1 breaks the next request; setting it back to 0 heals it."""
    await create(simulator_session, simulator)
    async with simulator_session.patch(simulator.url + "/_sim/config", json={"error_rate": 1.0}) as response:
        assert response.status == 200
    assert await post_create(simulator_session, simulator) >= 500
    simulator.state.config.error_rate = 0.0
    assert await post_create(simulator_session, simulator) == 201
