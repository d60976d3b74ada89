"""Taking the simulator down and up again, as a test of an upstream outage does."""

from __future__ import annotations

import aiohttp
import pytest

from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator
from tests.fixtures.simulator import fast_config
from tests.simulator.client import ME, browser_headers, create, fetch


async def test_stop_refuses_connections_and_start_restores_same_port_and_state(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """After stop() connections are refused; start() serves the same URL with the same generations."""
    generation = await create(simulator_session, simulator)
    url = simulator.url
    await simulator.stop()
    assert not simulator.running
    with pytest.raises(aiohttp.ClientConnectorError):
        await simulator_session.get(url + ME, headers=browser_headers(simulator))
    await simulator.start()
    assert simulator.url == url
    assert (await fetch(simulator_session, simulator, generation["id"]))["prompt"] == "a cat"
    assert simulator.state.account("sim-1").consumed == 1


async def test_restart_while_client_keeps_connections_alive(
    simulator: RunningSimulator,
) -> None:
    """A pooled keep-alive client recovers after a restart on the same port."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
            assert response.status == 200
        await simulator.stop()
        await simulator.start()
        async with session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
            assert response.status == 200


async def test_simulator_on_a_given_port_and_double_start_is_an_error() -> None:
    """A RunningSimulator binds the port it is given and refuses to start twice."""
    async with RunningSimulator(fast_config()) as first:
        port = first.port
    async with RunningSimulator(SimulatorConfig(), port=port) as second:
        assert second.url == f"http://127.0.0.1:{port}"
        with pytest.raises(RuntimeError):
            await second.start()


def test_url_before_first_start_is_an_error() -> None:
    """An unstarted simulator on port 0 has no URL yet."""
    with pytest.raises(RuntimeError):
        _ = RunningSimulator().url
