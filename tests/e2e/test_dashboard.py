"""The dashboard in a real headless Chromium, against a real stack: the api on a real port, a worker
process, the simulator and Redis. What a person does on the page, and what it changed behind it.

One Chromium serves the whole module (a fresh context per test), so the module runs in one event
loop, and builds its stack (api, simulator, Redis client) in that loop too.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Page, Request, Response, expect
from redis.asyncio import Redis

from api.app import create_app
from api.auth import owner_id
from shared import keys
from simulator.config import SimulatorConfig
from simulator.media import VIDEO_BYTES
from simulator.testing import RunningSimulator
from tests.e2e.helpers import records
from tests.fixtures.browser import Browser
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, TEST_KEYS, WorkerProcess, accounts_for, api_settings, headers

pytestmark = pytest.mark.asyncio(loop_scope="module")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour, chunks and CRCs and all: what any image check, however strict, takes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = png(32, 18, (230, 90, 40))


@dataclass
class Stack:
    api: TestClient[Any, Any]
    simulator: RunningSimulator
    redis: Redis  # bytes replies, as tests.e2e.helpers reads records


@pytest.fixture
def api_overrides() -> dict[str, object]:
    """Settings of the api under test beyond api_settings' (parametrize to change them)."""
    return {}


@pytest_asyncio.fixture(loop_scope="module")
async def stack(
    browser: Browser, redis_url: str, simulator_config: SimulatorConfig, api_overrides: dict[str, object]
) -> AsyncIterator[Stack]:
    async with RunningSimulator(simulator_config) as simulator:
        api: TestClient[Any, Any] = TestClient(
            TestServer(create_app(api_settings(redis_url, **api_overrides)))
        )
        await api.start_server()
        redis = Redis.from_url(redis_url)
        try:
            yield Stack(api, simulator, redis)
            await browser.finish()  # the page as the test left it, before its api goes away
        finally:
            await redis.aclose()
            await api.close()


# A GET of the list or of one generation: what a page that polls would send.
GENERATION_READ = re.compile(r"^GET \S*/api/generations(\?|/[0-9a-f-]{36}$)")


def page_url(api: TestClient[Any, Any]) -> str:
    return str(api.make_url("/"))


async def sign_in(page: Page, api: TestClient[Any, Any], key: str) -> None:
    await page.goto(page_url(api))
    await page.get_by_label("Secret key").fill(key)
    await page.get_by_role("button", name="Sign in").click()


def card(page: Page, gen_id: str | None = None) -> Any:
    return page.locator(f'.card[data-id="{gen_id}"]') if gen_id else page.locator(".card")


async def newest_card_id(page: Page) -> str:
    await expect(card(page).first).to_be_visible()
    gen_id = await card(page).first.get_attribute("data-id")
    assert gen_id
    return gen_id


async def record_card_states(page: Page) -> None:
    """Keep, in the page, every state each card has shown, in order (read by `card_states`)."""
    await page.evaluate(
        """() => {
          window.seenStates = {};
          const note = () => {
            for (const el of document.querySelectorAll('.card')) {
              const seen = (window.seenStates[el.dataset.id] ??= []);
              if (el.dataset.state && seen[seen.length - 1] !== el.dataset.state) seen.push(el.dataset.state);
            }
          };
          new MutationObserver(note).observe(document.getElementById('cards'),
            {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
          window.notReloaded = true;
        }"""
    )


async def card_states(page: Page, gen_id: str) -> list[str]:
    states: list[str] = await page.evaluate("(id) => window.seenStates[id] ?? []", gen_id)
    return states


@simulator_with(pending_seconds=0.8, processing_seconds=1.5)
async def test_a_generation_made_from_the_form_goes_live_from_pending_to_a_video_that_serves(
    browser: Browser, stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Sign in, create from the form, and watch the card reach a player, pushed, never polled."""
    api, simulator, redis = stack.api, stack.simulator, stack.redis
    start_worker(accounts_for(simulator, {"sim-1": 2}))
    page = browser.page

    await sign_in(page, api, "not-a-key")
    await expect(page.locator("#signin-error")).to_have_text(
        "This key was not accepted. Check it and try again."
    )
    assert await page.evaluate("Object.keys(localStorage)") == []
    await page.get_by_label("Secret key").fill(TEST_KEYS[0])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#gallery-empty")).to_be_visible()
    await expect(page.locator("#live-status")).to_have_attribute("data-status", "live")
    assert await page.evaluate("localStorage.getItem('luma-queue.key')") == TEST_KEYS[0]
    await browser.shot("signed-in")

    await record_card_states(page)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(f"{request.method} {request.url}"))
    responses: list[Response] = []
    page.on("response", lambda response: responses.append(response))

    await page.get_by_label("Prompt", exact=True).fill("A red fox running through fresh snow")
    await page.get_by_label("Aspect ratio").select_option("9:16")
    await page.get_by_label("Loop", exact=True).check()
    await page.get_by_role("button", name="Generate", exact=True).click()
    gen_id = await newest_card_id(page)
    await expect(card(page, gen_id)).to_have_attribute("data-state", "pending")
    await browser.shot("pending")
    await expect(card(page, gen_id)).to_have_attribute("data-state", "processing")
    await browser.shot("processing")
    await expect(card(page, gen_id)).to_have_attribute("data-state", "completed")
    detail = await api.get(f"/api/generations/{gen_id}", headers=headers())
    video_url = (await detail.json())["data"]["video"]["url"]
    assert video_url.startswith(simulator.url)
    video = card(page, gen_id).locator("video")
    await expect(video).to_have_attribute("src", video_url)
    await browser.shot("completed")

    assert await card_states(page, gen_id) == ["pending", "processing", "completed"]
    assert await page.evaluate("window.notReloaded") is True
    # After the create, no list or detail was read: every change was pushed.
    reads = [line for line in asked if GENERATION_READ.search(line)]
    assert reads == [], reads

    [stored] = await records(redis, [gen_id])
    assert (stored.prompt, stored.aspect_ratio, stored.loop) == (
        "A red fox running through fresh snow",
        "9:16",
        True,
    )
    played = [response for response in responses if response.url == video_url]
    assert played and played[0].status == 200  # the browser's own player fetched it
    async with aiohttp.ClientSession() as session, session.get(video_url) as answer:
        assert answer.status == 200 and await answer.read() == VIDEO_BYTES

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Secret key")).to_be_visible()
    assert await page.evaluate("Object.keys(localStorage)") == []


@simulator_with(pending_seconds=0.3, processing_seconds=0.5)
async def test_an_image_chosen_with_the_file_input_is_uploaded_and_the_videos_start_from_it(
    browser: Browser, stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The picked file reaches a Luma account before Generate, and one create and a batch use it."""
    api, simulator, redis = stack.api, stack.simulator, stack.redis
    start_worker(accounts_for(simulator, {"sim-1": 3}))
    page = browser.page
    await sign_in(page, api, TEST_KEYS[0])
    await expect(page.locator("#gallery-empty")).to_be_visible()

    await page.locator("#image-file").set_input_files(
        files=[{"name": "fox.png", "mimeType": "image/png", "buffer": PNG}]
    )
    dropzone = page.locator("#dropzone")
    await expect(dropzone).to_have_attribute("data-state", "ready")
    await expect(page.locator("#image-preview")).to_be_visible()
    public_url = await dropzone.get_attribute("data-public-url")
    assert public_url and public_url.startswith(simulator.url)
    [upload] = simulator.state.uploads.values()
    assert upload.data == PNG and upload.content_type == "image/png"
    await browser.shot("image-ready")

    await page.get_by_label("Prompt", exact=True).fill("The fox looks up")
    await page.get_by_role("button", name="Generate", exact=True).click()
    first = await newest_card_id(page)
    await expect(card(page, first).locator("img.image-used")).to_have_attribute("src", public_url)
    await browser.shot("with-image")

    await page.get_by_text("Batch", exact=True).click()
    await page.get_by_label("Prompts, one per line").fill(
        "The fox jumps\n\nThe fox lands\nThe fox runs off\n"
    )
    await page.get_by_role("button", name="Generate 3 videos").click()
    await expect(card(page)).to_have_count(4)
    prompts = await page.locator(".card .prompt").all_inner_texts()
    assert prompts == ["The fox runs off", "The fox lands", "The fox jumps", "The fox looks up"]
    ids = [gen_id for gen_id in await card(page).evaluate_all("els => els.map(el => el.dataset.id)")]

    for gen_id in ids:
        await expect(card(page, gen_id)).to_have_attribute("data-state", "completed")
    await browser.shot("all-completed")
    found = await records(redis, ids)
    assert {record.image for record in found} == {public_url}
    assert len({record.batch_id for record in found if record.batch_id}) == 1
    upstream = simulator.state.generation_reports()
    assert sorted(report["prompt"] for report in upstream) == sorted(prompts)
    assert {report["image_url"] for report in upstream} == {public_url}


@simulator_with(pending_seconds=0.3, processing_seconds=0.5)
async def test_an_admin_revives_an_expired_account_by_pasting_a_new_cookie(
    browser: Browser, stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The page shows the account expired; a cookie pasted in its dialog brings it back, and work runs."""
    api, simulator, redis = stack.api, stack.simulator, stack.redis
    start_worker(accounts_for(simulator, {"sim-1": 2}))
    simulator.state.expire_account("sim-1")
    response = await api.post(
        "/api/generations/create", json={"prompt": "waits for a live account"}, headers=headers()
    )
    gen_id = (await response.json())["data"][0]["id"]

    async def expired() -> bool:
        return await redis.hget(keys.account("sim-1"), "state") == b"expired"

    await wait_until(expired, within=20)

    page = browser.page
    await sign_in(page, api, ADMIN_KEY)
    row = page.locator('#accounts tr[data-account="sim-1"]')
    await expect(row).to_have_attribute("data-state", "expired")
    await expect(row.locator(".badge").first).to_have_text("Expired")
    await expect(page.locator(f'#holders tr[data-holder="{owner_id(TEST_KEYS[0])}"] td').nth(1)).to_have_text(
        "1"
    )
    await browser.shot("expired")

    simulator.state.set_token("sim-1", "sim-token-1-renewed")
    await row.get_by_role("button", name="New cookie").click()
    dialog = page.get_by_role("dialog", name="New cookie for sim-1")
    await dialog.get_by_label("Cookie").fill("access_token=sim-token-1-renewed")
    await browser.shot("new-cookie")
    await dialog.get_by_role("button", name="Save cookie").click()
    await expect(page.get_by_text("sim-1 is active again.")).to_be_visible()
    await expect(row).to_have_attribute("data-state", "active")
    await expect(dialog).to_be_hidden()

    async def completed() -> bool:
        [record] = await records(redis, [gen_id])
        return record.state == "completed"

    await wait_until(completed, within=20)
    assert [report["account"] for report in simulator.state.generation_reports()] == ["sim-1"]


async def test_on_a_phone_a_refused_create_reads_as_a_sentence_and_a_waiting_card_is_cancelled(
    browser: Browser, stack: Stack
) -> None:
    """No worker runs, so generations wait: a queue limit's refusal, a cancel, and the filters."""
    api, redis = stack.api, stack.redis
    holder = owner_id(TEST_KEYS[0])
    limited = await api.patch(
        f"/api/admin/holders/{holder}", json={"max_queued": 2}, headers=headers(ADMIN_KEY)
    )
    assert limited.status == 200, await limited.text()
    page = browser.page
    await page.set_viewport_size({"width": 390, "height": 844})
    await sign_in(page, api, TEST_KEYS[0])
    await expect(page.locator("#gallery-empty")).to_be_visible()

    for prompt in ("first in line", "second in line"):
        await page.get_by_label("Prompt", exact=True).fill(prompt)
        await page.get_by_role("button", name="Generate", exact=True).click()
        await expect(page.locator(".card .prompt").first).to_have_text(prompt)
    await expect(page.locator(".card .placeholder .big").first).to_have_text("#2 in line")
    stored_before = await redis.dbsize()

    await page.get_by_label("Prompt", exact=True).fill("one too many")
    await page.get_by_role("button", name="Generate", exact=True).click()
    refusal = page.locator("#prompt-error")
    await expect(refusal).to_contain_text("you have 2 generations waiting, your limit; nothing was stored")
    assert "{" not in await refusal.inner_text()
    await expect(card(page)).to_have_count(2)
    assert await redis.dbsize() == stored_before
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await browser.shot("refused")

    waiting = page.locator(".card", has_text="first in line")
    await waiting.get_by_role("button", name="Cancel").click()
    await expect(waiting).to_have_attribute("data-state", "failed")
    await expect(waiting.locator(".reason")).to_have_text("Cancelled before it reached Luma")

    await page.get_by_role("button", name="Failed").click()
    await expect(page.locator(".card .prompt")).to_have_text(["first in line"])
    await page.get_by_role("button", name="Completed").click()
    await expect(page.locator("#gallery-empty")).to_contain_text("No finished videos yet")
    await expect(card(page)).to_have_count(0)
    await browser.shot("filtered")


@pytest.mark.parametrize("api_overrides", [{"secret_key": []}], ids=["no SECRET_KEY"])
async def test_an_open_gateway_goes_straight_to_the_studio_and_the_admin_view_asks_for_its_key(
    browser: Browser, stack: Stack
) -> None:
    """Without SECRET_KEY there is no key to ask for; the admin key still guards the admin view."""
    account = {"name": "sim-1", "cookie": "access_token=never-used", "base_url": stack.simulator.url}
    added = await stack.api.post("/api/admin/accounts", json=account, headers=headers(ADMIN_KEY))
    assert added.status == 201, await added.text()
    page = browser.page
    await page.goto(page_url(stack.api))
    await expect(page.locator("#gallery-empty")).to_be_visible()
    await expect(page.locator("#who")).to_have_text("Open gateway")
    await expect(page.get_by_role("button", name="Sign out")).to_be_hidden()

    await page.get_by_role("link", name="Admin").click()
    await page.get_by_label("Admin key").fill("not the admin key")
    await page.get_by_role("button", name="Open the admin view").click()
    await expect(page.locator("#admin-key-error")).to_have_text("This is not the admin key.")
    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Open the admin view").click()
    await expect(page.locator('#accounts tr[data-account="sim-1"]')).to_have_attribute("data-state", "active")
    await browser.shot("admin")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert await page.evaluate("Object.keys(localStorage)") == []


async def test_a_page_whose_api_went_away_catches_up_on_what_happened_meanwhile(
    browser: Browser, stack: Stack, redis_url: str
) -> None:
    """The stream comes back by itself, from the last event it saw, and the card moves on."""
    page = browser.page
    await sign_in(page, stack.api, TEST_KEYS[0])
    await page.get_by_label("Prompt", exact=True).fill("made before the outage")
    await page.get_by_role("button", name="Generate", exact=True).click()
    gen_id = await newest_card_id(page)
    await expect(card(page, gen_id)).to_have_attribute("data-state", "pending")
    await page.evaluate("window.notReloaded = true")

    streams: list[Request] = []
    page.on(
        "request", lambda request: streams.append(request) if "/generations/events" in request.url else None
    )
    port = stack.api.server.port
    await stack.api.server.close()
    status = page.locator("#live-status")
    await expect(status).not_to_have_attribute("data-status", "live")
    await browser.shot("offline")

    # Meanwhile, on another api of the same gateway, the generation is taken back.
    other: TestClient[Any, Any] = TestClient(TestServer(create_app(api_settings(redis_url))))
    await other.start_server()
    try:
        history = await other.get(f"/api/generations/{gen_id}/events", headers=headers())
        [created_event] = [event["id"] for event in (await history.json())["data"]]
        cancelled = await other.post(f"/api/generations/{gen_id}/cancel", headers=headers())
        assert cancelled.status == 200, await cancelled.text()
    finally:
        await other.close()

    back: TestClient[Any, Any] = TestClient(TestServer(create_app(api_settings(redis_url)), port=port))
    await back.start_server()
    try:
        await expect(status).to_have_attribute("data-status", "live")
        await expect(card(page, gen_id)).to_have_attribute("data-state", "failed")
        await expect(card(page, gen_id).locator(".reason")).to_have_text("Cancelled before it reached Luma")
        assert await page.evaluate("window.notReloaded") is True
        # The browser's reconnect named the one event the page had seen: the create.
        asked_after = [(await request.all_headers()).get("last-event-id") for request in streams]
        assert asked_after and set(asked_after) == {created_event}
        await browser.finish()
    finally:
        await back.close()
