"""Extend, external images, watermark-free links, Luma's callbacks and kept uploads, through HTTP
with real worker processes against the simulator's web and official APIs."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from shared import keys
from shared.states import FailureReason
from simulator.config import AccountSpec, OfficialAccountSpec
from simulator.official import PREFIX
from simulator.testing import RunningSimulator
from tests.e2e.helpers import creates_per_prompt, records, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import TEST_KEYS, WorkerProcess, api_settings, headers
from tests.images import PNG

KEY = "luma-official-key-flows-0001"
WEB = [AccountSpec(name="sim-1", token="sim-token-1")]
OFFICIAL = [OfficialAccountSpec(name="api-1", key=KEY, credits_cents=5000)]
Gateway = TestClient[Any, Any]
RELAY_CLIENT = Path(__file__).resolve().parents[2] / "scripts" / "luma_relay_client.py"


def pool(simulator: RunningSimulator, *, web: bool = True, official: bool = True) -> str:
    accounts: list[dict[str, Any]] = []
    if web:
        accounts.append(
            {
                "name": "sim-1",
                "cookie": f"access_token={simulator.state.account('sim-1').token}",
                "base_url": simulator.url,
                "max_concurrency": 2,
            }
        )
    if official:
        accounts.append(
            {"name": "api-1", "kind": "official", "api_key": KEY, "base_url": simulator.url + PREFIX}
        )
    return json.dumps(accounts)


@pytest_asyncio.fixture
async def gateway(redis_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The api, serving the files the workers keep (the same FILES_DIR)."""
    # allow_private_networks: the /luma upload of a URL fetches from the test's own image host.
    settings = api_settings(redis_url, files_dir=str(tmp_path / "files"), allow_private_networks=True)
    client: Gateway = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def base_of(client: Gateway) -> str:
    return str(client.make_url("")).rstrip("/")


def worker_for(
    start_worker: Callable[..., WorkerProcess],
    client: Gateway,
    tmp_path: Path,
    accounts: str,
    **settings: Any,
) -> WorkerProcess:
    return start_worker(
        accounts, PUBLIC_BASE_URL=base_of(client), FILES_DIR=str(tmp_path / "files"), **settings
    )


async def create(client: Gateway, **body: Any) -> str:
    response = await client.post("/api/generations/create", json=body, headers=headers())
    assert response.status == 200, await response.text()
    return str((await response.json())["data"][0]["id"])


async def view(client: Gateway, gen_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/generations/{gen_id}", headers=headers())
    assert response.status == 200, await response.text()
    data: dict[str, Any] = (await response.json())["data"]
    return data


@pytest_asyncio.fixture
async def image_host() -> AsyncIterator[str]:
    """A web server on 127.0.0.1 with /cat.png (an image) and /page.png (HTML that says it is one)."""

    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>not an image</html>", content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/page.png", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@simulator_with(
    accounts=WEB, official_accounts=OFFICIAL, web_extend=True, pending_seconds=0.02, processing_seconds=0.2
)
async def test_extends_run_on_the_account_of_the_original_and_web_videos_get_their_download_link(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """A web original is extended by the web extend route, an official one by a generation
    keyframe, each on its own account; a web video carries the fetched watermark-free link."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator))
    web_original = await create(gateway, prompt="web original", provider="web")
    official_original = await create(gateway, prompt="official original", model="ray-flash-2")
    originals = await wait_all_terminal(redis, [web_original, official_original], within=30)
    assert [record.state for record in originals] == ["completed", "completed"]
    shown = await view(gateway, web_original)
    assert "response-content-disposition" in shown["video"]["download_url"]
    assert (await view(gateway, official_original))["video"]["url"].endswith("/video.mp4")

    extended = []
    for original in (web_original, official_original):
        response = await gateway.post(
            f"/api/generations/{original}/extend", json={"prompt": "and then"}, headers=headers()
        )
        assert response.status == 200, await response.text()
        extended.append((await response.json())["data"][0]["id"])
    done = await wait_all_terminal(redis, extended, within=30)
    assert [record.state for record in done] == ["completed", "completed"]
    assert [record.account for record in done] == ["sim-1", "api-1"]
    by_id = {report["id"]: report for report in simulator.state.generation_reports()}
    assert [by_id[record.upstream_id or ""]["extend_of"] for record in done] == [
        record.upstream_id for record in originals
    ]
    assert (await view(gateway, extended[0]))["extend_of"] == web_original


@simulator_with(accounts=WEB, official_accounts=OFFICIAL, pending_seconds=0.02, processing_seconds=0.1)
async def test_an_external_image_on_a_private_address_fails_image_unreachable_before_any_create(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
    image_host: str,
) -> None:
    """Without ALLOW_PRIVATE_NETWORKS a loopback image is never fetched: failed, nothing spent."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator))
    gen_id = await create(gateway, prompt="private image", image=f"{image_host}/cat.png")
    [record] = await wait_all_terminal(redis, [gen_id], within=30)
    assert record.state == "failed" and record.failure_reason == FailureReason.IMAGE_UNREACHABLE
    assert "loopback" in (record.failure_message or "")
    assert creates_per_prompt(simulator) == {}
    # What its claim reserved went back.
    assert not await redis.hlen(keys.reserved_cost(record.account or ""))


@simulator_with(accounts=WEB, official_accounts=OFFICIAL, pending_seconds=0.02, processing_seconds=0.1)
async def test_an_external_image_is_fetched_and_put_where_each_kind_of_account_takes_it(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
    image_host: str,
) -> None:
    """Web: uploaded to the account; official: kept by the gateway and fetched by Luma from
    PUBLIC_BASE_URL/files/; a page that only claims to be an image fails image_unreachable."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator), ALLOW_PRIVATE_NETWORKS="true")
    on_web = await create(gateway, prompt="cat on web", provider="web", image=f"{image_host}/cat.png")
    on_official = await create(
        gateway, prompt="cat on official", model="ray-flash-2", image=f"{image_host}/cat.png"
    )
    not_image = await create(gateway, prompt="not a cat", image=f"{image_host}/page.png")
    done = await wait_all_terminal(redis, [on_web, on_official, not_image], within=30)
    assert [record.state for record in done] == ["completed", "completed", "failed"], [
        r.failure_message for r in done
    ]
    assert done[2].failure_reason == FailureReason.IMAGE_UNREACHABLE
    reports = {report["prompt"]: report for report in simulator.state.generation_reports()}
    assert "/_storage/public/" in reports["cat on web"]["image_url"]
    assert reports["cat on official"]["image_url"].startswith(base_of(gateway) + "/files/")
    assert [upload["size"] for upload in (u.report() for u in simulator.state.uploads.values())] == [len(PNG)]
    assert "not a cat" not in reports
    # The caller still sees the image it named.
    assert (await view(gateway, on_web))["image"] == f"{image_host}/cat.png"


@simulator_with(accounts=WEB, official_accounts=OFFICIAL, pending_seconds=0.3, processing_seconds=1.0)
async def test_luma_callbacks_refresh_a_generation_at_once_and_their_body_is_not_believed(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """With polling all but off, callbacks alone bring the generation to completed; a forged
    "completed" callback while it still renders changes nothing."""
    worker_for(
        start_worker,
        gateway,
        tmp_path,
        pool(simulator, web=False),
        POLL_INTERVAL_SECONDS=600,
        CALLBACK_POLL_INTERVAL_SECONDS=600,
        DEFAULT_GENERATION_SECONDS=600,
    )
    gen_id = await create(gateway, prompt="call me back", model="ray-flash-2")
    await wait_until(lambda: bool(simulator.state.generation_reports()), within=20)
    [upstream] = simulator.state.generations.values()
    assert upstream.callback_url and upstream.callback_url.startswith(
        base_of(gateway) + "/api/upstream/callback/"
    )
    path = upstream.callback_url[len(base_of(gateway)) :]
    forged = await gateway.post(
        path, json={"id": upstream.id, "state": "completed", "assets": {"video": "http://evil.example/x.mp4"}}
    )
    assert forged.status == 200

    async def processing() -> bool:
        return (await view(gateway, gen_id))["state"] == "processing"

    await wait_until(processing, within=20)  # the dreaming callback was read from the API
    assert (await view(gateway, gen_id))["video"] is None
    [record] = await wait_all_terminal(redis, [gen_id], within=30)
    assert record.state == "completed" and record.video_url and "evil" not in record.video_url
    assert {entry["state"] for entry in simulator.state.callback_log} >= {"dreaming", "completed"}


@simulator_with(accounts=[], official_accounts=OFFICIAL, pending_seconds=0.02, processing_seconds=0.1)
async def test_with_only_official_accounts_an_upload_is_kept_and_served_to_luma(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """The official API has no upload: the gateway keeps the bytes at PUBLIC_BASE_URL/files/<id>,
    and a generation using that URL runs with Luma fetching it from there."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator, web=False))
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="cat.png", content_type="image/png")
    uploaded = await gateway.post("/api/generations/upload", data=form, headers=headers())
    assert uploaded.status == 200, await uploaded.text()
    public_url = (await uploaded.json())["data"]["public_url"]
    assert public_url.startswith(base_of(gateway) + "/files/")
    served = await gateway.get(public_url[len(base_of(gateway)) :])
    assert served.status == 200 and await served.read() == PNG

    gen_id = await create(gateway, prompt="kept cat", image=public_url)
    [record] = await wait_all_terminal(redis, [gen_id], within=30)
    assert record.state == "completed", record.failure_message
    [report] = simulator.state.generation_reports()
    assert report["image_url"] == public_url and report["kind"] == "official"


@pytest.mark.parametrize("fault_point", ["before_create", "after_create"])
@simulator_with(
    accounts=[],
    official_accounts=[OfficialAccountSpec(name="api-1", key=KEY, max_concurrency=1)],
    pending_seconds=0.02,
    processing_seconds=0.2,
)
async def test_a_worker_killed_around_an_official_create_never_creates_twice(
    fault_point: str,
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """The crash-safety kill test with an official account: SIGKILL before or after the paid
    create, a new worker settles each generation once, adopting what the dead one made."""
    accounts = pool(simulator, web=False)
    crash = {"SUBMIT_JOB_TIMEOUT_SECONDS": 2, "UPLOAD_TIMEOUT_SECONDS": 2}
    crashing = worker_for(start_worker, gateway, tmp_path, accounts, FAULT_POINT=fault_point, **crash)
    ids = [await create(gateway, prompt=f"{fault_point} {n}", model="ray-flash-2") for n in range(4)]
    await wait_until(lambda: crashing.process.poll() is not None, within=20)
    assert crashing.process.returncode == -9
    worker_for(start_worker, gateway, tmp_path, accounts, **crash)
    found = await wait_all_terminal(redis, ids, within=60)
    assert all(
        record.state == "completed" or record.failure_reason == FailureReason.INDETERMINATE_CREATE
        for record in found
    ), [(r.state, r.failure_message) for r in found]
    assert all(count == 1 for count in creates_per_prompt(simulator).values())
    if fault_point == "after_create":
        assert [record.state for record in found] == ["completed"] * 4
    official = simulator.state.account_stats()["api-1"]
    assert official["spent_cents"] == 24 * official["creates"]


@simulator_with(
    accounts=[],
    official_accounts=[OfficialAccountSpec(name="api-1", key=KEY, max_concurrency=1)],
    pending_seconds=0.02,
    processing_seconds=0.2,
    hang_after_create_seconds=30,
)
async def test_an_official_create_in_flight_when_its_worker_dies_is_adopted(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """Luma made it but the answer never came back: the next worker finds it by listing."""
    accounts = pool(simulator, web=False)
    crash = {"SUBMIT_JOB_TIMEOUT_SECONDS": 2}
    first = worker_for(start_worker, gateway, tmp_path, accounts, **crash)
    gen_id = await create(gateway, prompt="official in flight", model="ray-flash-2")
    await wait_until(lambda: len(simulator.state.generation_reports()) == 1, within=15)
    first.kill()
    simulator.state.update_config({"hang_after_create_seconds": 0})
    worker_for(start_worker, gateway, tmp_path, accounts, **crash)
    [record] = await wait_all_terminal(redis, [gen_id], within=60)
    assert record.state == "completed"
    assert creates_per_prompt(simulator) == {"official in flight": 1}
    assert len(await records(redis, [gen_id])) == 1


@simulator_with(accounts=WEB, pending_seconds=0.05, processing_seconds=0.3)
async def test_a_client_of_the_go_relay_runs_create_poll_completed_against_the_luma_routes(
    gateway: Gateway, simulator: RunningSimulator, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """scripts/luma_relay_client.py, written from that relay's README, passes against /luma/*."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator, official=False))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(RELAY_CLIENT), base_of(gateway), TEST_KEYS[0], "a relay's fox",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=150)
    assert process.returncode == 0, output.decode()
    assert output.decode().splitlines()[-1] == "ok"
    assert creates_per_prompt(simulator) == {"a relay's fox": 1}


@simulator_with(accounts=WEB, pending_seconds=0.02, processing_seconds=0.1)
async def test_the_luma_upload_takes_a_data_uri_or_a_url_and_its_public_url_makes_a_generation(
    gateway: Gateway,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
    tmp_path: Path,
    image_host: str,
) -> None:
    """file_upload with a data URI and with an http URL: each lands on the account, and a /luma
    create naming its public_url runs there without fetching anything again."""
    worker_for(start_worker, gateway, tmp_path, pool(simulator, official=False))
    bearer = {"Authorization": f"Bearer {TEST_KEYS[0]}"}
    encoded = "data:image/png;base64," + base64.b64encode(PNG).decode()
    urls = []
    for source in (encoded, f"{image_host}/cat.png"):
        response = await gateway.post("/luma/generations/file_upload", json={"url": source}, headers=bearer)
        assert response.status == 200, await response.text()
        slot = await response.json()
        assert set(slot) == {"id", "presigned_url", "public_url"}
        urls.append(slot["public_url"])
    assert [upload.report()["size"] for upload in simulator.state.uploads.values()] == [len(PNG)] * 2
    created = await gateway.post(
        "/luma/generations", json={"user_prompt": "uploaded cat", "image_url": urls[1]}, headers=bearer
    )
    assert created.status == 201, await created.text()
    [record] = await wait_all_terminal(redis, [(await created.json())["id"]], within=30)
    assert record.state == "completed" and record.upstream_image is None
    [report] = simulator.state.generation_reports()
    assert report["image_url"] == urls[1]
