"""Create, read and list generations, and their life over time."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from simulator.state import SimulatorState
from simulator.testing import RunningSimulator
from tests.fixtures.simulator import fast_config, simulator_with, wait_until
from tests.simulator.client import CREATE, LIST, PHOTON, browser_headers, create, fetch

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def wait_for_state(
    session: aiohttp.ClientSession, sim: RunningSimulator, generation_id: str, wanted: set[str]
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await fetch(session, sim, generation_id))
        return seen["state"] in wanted

    await wait_until(reached, within=5)
    return seen


async def test_create_answers_201_with_array_holding_new_pending_generation(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Create is 201 and a bare array whose element 0 is the new generation, pending."""
    async with simulator_session.post(
        simulator.url + CREATE,
        json={"user_prompt": "a red fox", "aspect_ratio": "9:16", "expand_prompt": True, "loop": True},
        headers=browser_headers(simulator),
    ) as response:
        assert response.status == 201
        body = await response.json()
    assert isinstance(body, list) and len(body) == 1
    generation = body[0]
    assert UUID.match(generation["id"])
    assert generation["prompt"] == "a red fox"
    assert generation["state"] == "pending"
    assert ISO_UTC.match(generation["created_at"])
    assert generation["video"] is None
    assert generation["liked"] is None
    assert isinstance(generation["estimate_wait_seconds"], int | float)
    assert {"thumbnail", "last_frame"} <= generation.keys()
    assert simulator.state.generations[generation["id"]].aspect_ratio == "9:16"


async def test_create_without_trailing_slash_redirects_307_to_slash_path(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Like FastAPI, the slashless create path is a 307 to the slash path and creates nothing."""
    async with simulator_session.post(
        simulator.url + f"{PHOTON}/generations",
        json={"user_prompt": "x"},
        headers=browser_headers(simulator),
        allow_redirects=False,
    ) as response:
        assert response.status == 307
        assert response.headers["Location"] == simulator.url + CREATE
    assert simulator.state.generations == {}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"aspect_ratio": "16:9"}', ["body", "user_prompt"]),
        (b'{"user_prompt": 42}', ["body", "user_prompt"]),
        (b'{"user_prompt": "x", "aspect_ratio": "2:1"}', ["body", "aspect_ratio"]),
        (b'{"user_prompt": ', ["body", 16]),
        (b"", ["body"]),
    ],
)
async def test_invalid_create_body_is_422_in_fastapi_shape_and_creates_nothing(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession, body: bytes, loc: list[Any]
) -> None:
    """Missing or mistyped fields and broken JSON answer 422 with detail[].loc/msg/type."""
    headers = {**browser_headers(simulator), "Content-Type": "application/json"}
    async with simulator_session.post(simulator.url + CREATE, data=body, headers=headers) as response:
        assert response.status == 422
        detail = (await response.json())["detail"]
    assert detail[0]["loc"] == loc
    assert isinstance(detail[0]["msg"], str) and isinstance(detail[0]["type"], str)
    assert simulator.state.generations == {}
    assert simulator.state.account("sim-1").consumed == 0


async def test_get_generation_is_200_for_owner_and_404_otherwise(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Another account's generation and an unknown id are both 404 Generation not found."""
    generation = await create(simulator_session, simulator)
    assert (await fetch(simulator_session, simulator, generation["id"]))["id"] == generation["id"]
    for account, generation_id in (
        ("sim-2", generation["id"]),
        ("sim-1", "00000000-0000-0000-0000-000000000000"),
    ):
        async with simulator_session.get(
            f"{simulator.url}{PHOTON}/generations/{generation_id}",
            headers=browser_headers(simulator, account),
        ) as response:
            assert response.status == 404
            assert await response.json() == {"detail": "Generation not found"}


async def test_list_is_bare_array_of_own_generations_newest_first_with_offset_and_limit(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """The list pages through the account's generations, newest first, and no one else's."""
    ids = [(await create(simulator_session, simulator, f"p{i}"))["id"] for i in range(3)]
    await create(simulator_session, simulator, "other", account="sim-2")
    async with simulator_session.get(
        simulator.url + LIST, params={"offset": "0", "limit": "10"}, headers=browser_headers(simulator)
    ) as response:
        assert response.status == 200
        listed = await response.json()
    assert [g["id"] for g in listed] == ids[::-1]
    async with simulator_session.get(
        simulator.url + LIST, params={"offset": "1", "limit": "1"}, headers=browser_headers(simulator)
    ) as response:
        assert [g["id"] for g in await response.json()] == [ids[1]]


@pytest.mark.parametrize("query", ["offset=-1", "limit=0", "limit=abc", "offset=x"])
async def test_list_with_bad_offset_or_limit_is_422(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession, query: str
) -> None:
    """Out-of-range or non-integer paging answers 422 with a query loc."""
    async with simulator_session.get(
        f"{simulator.url}{LIST}?{query}", headers=browser_headers(simulator)
    ) as response:
        assert response.status == 422
        assert (await response.json())["detail"][0]["loc"][0] == "query"


async def test_generation_goes_pending_processing_completed_with_video(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """State follows the clock: pending, then processing, then completed with video.url set."""
    generation = await create(simulator_session, simulator)
    processing = await wait_for_state(
        simulator_session, simulator, generation["id"], {"processing", "completed"}
    )
    assert processing["state"] == "processing", "processing lasts 0.2 s; it should be observed"
    assert processing["video"] is None
    completed = await wait_for_state(simulator_session, simulator, generation["id"], {"completed", "failed"})
    assert completed["state"] == "completed"
    video = completed["video"]
    assert video["url"].startswith(simulator.url) and video["width"] == 1360 and video["height"] == 752
    assert video["thumbnail"].startswith(simulator.url)
    assert completed["estimate_wait_seconds"] is None


@simulator_with(failure_rate=1.0, pending_seconds=0.0, processing_seconds=0.05)
async def test_failure_rate_one_makes_every_generation_fail(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """With failure_rate=1 every generation ends failed, without a video."""
    generations = [await create(simulator_session, simulator, prompt) for prompt in ("a", "b", "c")]
    for generation in generations:
        final = await wait_for_state(simulator_session, simulator, generation["id"], {"completed", "failed"})
        assert final["state"] == "failed"
        assert final["video"] is None


@simulator_with(missing_url_seconds=0.3, pending_seconds=0.0, processing_seconds=0.05)
async def test_completed_generation_lacks_video_url_during_missing_url_window(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """For missing_url_seconds after processing, state is completed but there is no video URL."""
    generation = await create(simulator_session, simulator)
    completed = await wait_for_state(simulator_session, simulator, generation["id"], {"completed"})
    assert completed["video"] is None, "the URL must arrive only after the window"

    async def url_arrived() -> bool:
        video = (await fetch(simulator_session, simulator, generation["id"]))["video"]
        return bool(video and video.get("url"))

    await wait_until(url_arrived, within=5)


def test_failure_is_drawn_from_seed_not_prompt() -> None:
    """Two simulators with the same seed fail the same generations whatever the prompts."""
    outcomes = []
    for prompts in (["a", "b", "c", "d", "e", "f"], ["fail", "x", "error", "y", "z", "q"]):
        state = SimulatorState(fast_config(failure_rate=0.5, seed=7))
        account = state.account("sim-1")
        outcomes.append([state.create_generation(account, p).outcome for p in prompts])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"completed", "failed"}


async def test_extend_is_405_method_not_allowed(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Extend was removed upstream: 405 with FastAPI's detail, and nothing is created."""
    generation = await create(simulator_session, simulator)
    async with simulator_session.post(
        f"{simulator.url}{PHOTON}/generations/{generation['id']}/extend",
        json={"user_prompt": "more"},
        headers=browser_headers(simulator),
    ) as response:
        assert response.status == 405
        assert await response.json() == {"detail": "Method Not Allowed"}
    assert len(simulator.state.generations) == 1


@simulator_with(hang_after_create_seconds=1.0)
async def test_create_that_hangs_has_already_stored_the_generation(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """With hang_after_create_seconds a client that times out still leaves a billed generation."""
    with pytest.raises(TimeoutError):
        await simulator_session.post(
            simulator.url + CREATE,
            json={"user_prompt": "slow"},
            headers=browser_headers(simulator),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert [g.prompt for g in simulator.state.generations.values()] == ["slow"]
    assert simulator.state.account("sim-1").consumed == 1
