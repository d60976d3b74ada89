"""Cookie authentication and session rotation."""

from __future__ import annotations

from http.cookies import SimpleCookie

import aiohttp
import pytest

from simulator.testing import RunningSimulator
from tests.simulator.client import ME, USAGE, browser_headers


def rotated_session(response: aiohttp.ClientResponse) -> str:
    headers = response.headers.getall("Set-Cookie", [])
    assert len(headers) == 1, headers
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(headers[0])
    return cookie["luma_session"].value


async def status_with_cookie(
    session: aiohttp.ClientSession, sim: RunningSimulator, cookie: str | None
) -> int:
    headers = {"Cookie": cookie} if cookie is not None else {}
    async with session.get(sim.url + ME, headers=headers) as response:
        return response.status


async def test_request_without_cookie_is_401_not_authenticated(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """No Cookie header answers 401 with FastAPI's detail and rotates nothing."""
    async with simulator_session.get(simulator.url + USAGE) as response:
        assert response.status == 401
        assert await response.json() == {"detail": "Not authenticated"}
        assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize(
    "cookie",
    ["access_token=wrong", "refresh_token=sim-token-1", "luma_session=sim-token-1x", "garbage", ""],
)
async def test_cookie_without_valid_credential_is_401(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession, cookie: str
) -> None:
    """Unknown tokens, and valid tokens under a name that is not a credential, are refused."""
    assert await status_with_cookie(simulator_session, simulator, cookie) == 401


@pytest.mark.parametrize(
    "cookie",
    [
        "access_token=sim-token-1",
        "access_token=sim-token-1; refresh_token=whatever",
        "refresh_token=whatever;  access_token=sim-token-1 ",
        'access_token="sim-token-1"',
        "luma_session=sim-token-1",
    ],
)
async def test_cookie_string_with_a_valid_credential_is_accepted(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession, cookie: str
) -> None:
    """Any access_token or luma_session cookie holding a valid credential authenticates."""
    assert await status_with_cookie(simulator_session, simulator, cookie) == 200


async def test_authenticated_response_rotates_luma_session(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Each authenticated answer sets a new luma_session, which alone then authenticates."""
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        assert response.status == 200
        first = rotated_session(response)
        raw = response.headers["Set-Cookie"]
    assert raw == f"luma_session={first}; Path=/; HttpOnly; Secure; SameSite=Lax"
    async with simulator_session.get(
        simulator.url + ME, headers={"Cookie": f"luma_session={first}"}
    ) as response:
        assert response.status == 200
        second = rotated_session(response)
    assert second != first
    # A client that merged the first rotation and then lost the second still gets in.
    assert await status_with_cookie(simulator_session, simulator, f"luma_session={first}") == 200
    assert await status_with_cookie(simulator_session, simulator, "access_token=sim-token-1") == 200


async def test_rotated_session_sent_back_is_seen_in_request_log(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """The request log shows the merged cookie the client sent, with the account it resolved to."""
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        session = rotated_session(response)
    merged = f"access_token=sim-token-1; luma_session={session}"
    assert await status_with_cookie(simulator_session, simulator, merged) == 200
    last = simulator.state.requests(path_contains="/users/v1/me")[-1]
    assert last.cookie == merged
    assert last.account == "sim-1"


async def test_expired_account_refuses_every_credential_until_new_token(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Expiring an account makes its token and sessions 401; a new token re-enables only itself."""
    async with simulator_session.get(simulator.url + ME, headers=browser_headers(simulator)) as response:
        session = rotated_session(response)
    async with simulator_session.post(simulator.url + "/_sim/accounts/sim-1/expire") as response:
        assert response.status == 200
    for cookie in ("access_token=sim-token-1", f"luma_session={session}"):
        assert await status_with_cookie(simulator_session, simulator, cookie) == 401
    assert simulator.state.account_stats()["sim-1"]["rejected_unauthenticated"] == 2
    assert await status_with_cookie(simulator_session, simulator, "access_token=sim-token-2") == 200

    async with simulator_session.post(
        simulator.url + "/_sim/accounts/sim-1/token", json={"token": "fresh-token"}
    ) as response:
        assert response.status == 200
    assert await status_with_cookie(simulator_session, simulator, "access_token=fresh-token") == 200
    assert await status_with_cookie(simulator_session, simulator, "access_token=sim-token-1") == 401
    assert await status_with_cookie(simulator_session, simulator, f"luma_session={session}") == 401


async def test_token_already_used_by_another_account_is_409(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Two accounts can never share a credential."""
    async with simulator_session.post(
        simulator.url + "/_sim/accounts/sim-1/token", json={"token": "sim-token-2"}
    ) as response:
        assert response.status == 409
