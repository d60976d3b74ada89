"""Signed uploads to the simulated bucket, and images used by generations."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from simulator.testing import RunningSimulator
from tests.simulator.client import PHOTON, UPLOAD, browser_headers, call, create, fetch

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def test_sign_upload_returns_id_and_urls_on_the_simulator(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """file_upload answers {id, presigned_url, public_url}, both URLs on the simulator itself."""
    signed = await call(simulator_session, simulator, "POST", UPLOAD)
    assert signed.keys() == {"id", "presigned_url", "public_url"}
    assert signed["presigned_url"].startswith(f"{simulator.url}/_storage/upload/{signed['id']}?")
    assert "X-Amz-Signature=" in signed["presigned_url"]
    assert signed["public_url"] == f"{simulator.url}/_storage/public/{signed['id']}/file.jpg"
    assert simulator.state.uploads[signed["id"]].account == "sim-1"


async def test_put_then_public_url_serves_the_same_bytes_and_type(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Before the PUT public_url is 404; after it, it serves exactly the bytes and content type."""
    signed = await call(simulator_session, simulator, "POST", UPLOAD)
    async with simulator_session.get(signed["public_url"]) as response:
        assert response.status == 404
    # No cookie on the PUT: the signature in the URL is the credential.
    async with simulator_session.put(
        signed["presigned_url"], data=PNG, headers={"Content-Type": "image/png"}
    ) as response:
        assert response.status == 200
    async with simulator_session.get(signed["public_url"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == PNG


@pytest.mark.parametrize(
    ("mangle", "content_type", "status"),
    [
        (lambda url: url[:-4] + "0000", "image/png", 403),
        (lambda url: url.split("?")[0], "image/png", 403),
        (lambda url: url, "text/plain", 400),
    ],
    ids=["wrong-signature", "no-signature", "not-an-image"],
)
async def test_put_with_bad_signature_or_type_is_refused_and_stores_nothing(
    simulator: RunningSimulator,
    simulator_session: aiohttp.ClientSession,
    mangle: Any,
    content_type: str,
    status: int,
) -> None:
    """A tampered signature answers 403, a non-image type 400, and the public URL stays 404."""
    signed = await call(simulator_session, simulator, "POST", UPLOAD)
    async with simulator_session.put(
        mangle(signed["presigned_url"]), data=PNG, headers={"Content-Type": content_type}
    ) as response:
        assert response.status == status
        assert "<Error>" in await response.text()
    async with simulator_session.get(signed["public_url"]) as response:
        assert response.status == 404


async def test_sign_upload_requires_auth_and_query(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Signing without a cookie is 401; without file_type/filename it is 422."""
    async with simulator_session.post(simulator.url + UPLOAD) as response:
        assert response.status == 401
    async with simulator_session.post(
        f"{simulator.url}{PHOTON}/generations/file_upload", headers=browser_headers(simulator)
    ) as response:
        assert response.status == 422
        locs = [e["loc"] for e in (await response.json())["detail"]]
    assert locs == [["query", "file_type"], ["query", "filename"]]


async def test_generation_from_image_never_uploaded_fails(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """An image_url whose bytes never reached the bucket cannot be fetched, so the generation fails."""
    signed = await call(simulator_session, simulator, "POST", UPLOAD)
    generation = await create(simulator_session, simulator, image_url=signed["public_url"])
    assert simulator.state.generations[generation["id"]].outcome == "failed"


async def test_generation_from_image_of_another_account_is_counted(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Using sim-2's upload on sim-1 works but is counted, since Luma wants the same account."""
    signed = await call(simulator_session, simulator, "POST", UPLOAD, "sim-2")
    async with simulator_session.put(
        signed["presigned_url"], data=PNG, headers={"Content-Type": "image/png"}
    ) as response:
        assert response.status == 200
    generation = await create(simulator_session, simulator, image_url=signed["public_url"])
    assert simulator.state.generations[generation["id"]].outcome == "completed"
    assert simulator.state.account_stats()["sim-1"]["creates_with_foreign_image"] == 1
    assert (await fetch(simulator_session, simulator, generation["id"]))["request"]["image_url"] == signed[
        "public_url"
    ]
