"""Video links and the CDN that serves generated media."""

from __future__ import annotations

import aiohttp

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import simulator_with, wait_until
from tests.simulator.client import PHOTON, browser_headers, create, fetch


async def download_link(
    session: aiohttp.ClientSession, sim: RunningSimulator, generation_id: str
) -> aiohttp.ClientResponse:
    return await session.get(
        f"{sim.url}{PHOTON}/generations/{generation_id}/download_video_url", headers=browser_headers(sim)
    )


@simulator_with(pending_seconds=0.0, processing_seconds=0.05)
async def test_completed_generation_media_is_served_without_auth(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """video.url, thumbnails and the download link serve small files with media types, no cookie."""
    generation = await create(simulator_session, simulator)

    async def has_video() -> bool:
        return (await fetch(simulator_session, simulator, generation["id"]))["video"] is not None

    await wait_until(has_video)
    done = await fetch(simulator_session, simulator, generation["id"])
    async with await download_link(simulator_session, simulator, generation["id"]) as response:
        assert response.status == 200
        download = (await response.json())["url"]
    expected = [
        (done["video"]["url"], "video/mp4", b"ftyp"),
        (download, "video/mp4", b"ftyp"),
        (done["video"]["thumbnail"], "image/jpeg", b"\xff\xd8"),
        (done["thumbnail"]["url"], "image/jpeg", b"\xff\xd8"),
        (done["last_frame"]["url"], "image/jpeg", b"\xff\xd8"),
    ]
    for url, content_type, magic in expected:
        async with simulator_session.get(url) as response:
            assert response.status == 200, url
            assert response.content_type == content_type
            body = await response.read()
        assert magic in body[:12] and 1000 < len(body) < 10_000


@simulator_with(pending_seconds=30.0)
async def test_media_and_download_link_of_unfinished_generation_are_not_available(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Before the video exists the download link is 400 and the media URL 404."""
    generation = await create(simulator_session, simulator)
    async with await download_link(simulator_session, simulator, generation["id"]) as response:
        assert response.status == 400
        assert "detail" in await response.json()
    async with simulator_session.get(f"{simulator.url}/_media/{generation['id']}/video.mp4") as response:
        assert response.status == 404


async def test_download_link_of_unknown_generation_is_404(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """download_video_url answers 404 Generation not found for an id the account does not own."""
    generation = await create(simulator_session, simulator, account="sim-2")
    async with await download_link(simulator_session, simulator, generation["id"]) as response:
        assert response.status == 404
        assert await response.json() == {"detail": "Generation not found"}
