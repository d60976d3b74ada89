"""Small helpers the simulator tests share: browser-like headers and the common calls."""

from __future__ import annotations

from typing import Any

import aiohttp

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import account_cookie

PHOTON = "/api/photon/v1"
CREATE = f"{PHOTON}/generations/"
LIST = f"{PHOTON}/user/generations/"
USAGE = f"{PHOTON}/subscription/usage"
UPLOAD = f"{PHOTON}/generations/file_upload?file_type=image&filename=file.jpg"
ME = "/api/users/v1/me"


def browser_headers(sim: RunningSimulator, account: str = "sim-1") -> dict[str, str]:
    """What public clients send: the account's cookie plus Origin, Referer and a browser User-Agent."""
    return {
        "Cookie": account_cookie(sim, account),
        "Origin": "https://lumalabs.ai",
        "Referer": "https://lumalabs.ai/",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    }


async def create(
    session: aiohttp.ClientSession,
    sim: RunningSimulator,
    prompt: str = "a cat",
    account: str = "sim-1",
    **extra: Any,
) -> dict[str, Any]:
    """Create a generation and return element 0 of the 201 array."""
    body = {"user_prompt": prompt, "aspect_ratio": "16:9", "expand_prompt": False, **extra}
    async with session.post(sim.url + CREATE, json=body, headers=browser_headers(sim, account)) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert isinstance(created, list)
    generation: dict[str, Any] = created[0]
    return generation


async def call(
    session: aiohttp.ClientSession,
    sim: RunningSimulator,
    method: str,
    path: str,
    account: str = "sim-1",
) -> Any:
    """`method path` as the account's browser would send it; the JSON body of its 200 answer."""
    async with session.request(method, sim.url + path, headers=browser_headers(sim, account)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def fetch(
    session: aiohttp.ClientSession, sim: RunningSimulator, generation_id: str, account: str = "sim-1"
) -> dict[str, Any]:
    path = f"{PHOTON}/generations/{generation_id}"
    generation: dict[str, Any] = await call(session, sim, "GET", path, account)
    return generation
