"""OfficialProvider against the bundled simulator's official API: shapes, states, limits, credits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import pytest
import pytest_asyncio

from shared.models import CreateRequest, GenerationRecord
from simulator.config import OfficialAccountSpec
from simulator.official import PREFIX
from simulator.testing import RunningSimulator
from tests.fixtures.simulator import simulator_with, wait_until
from worker.upstream.errors import AccountExpired, GenerationNotFound, RateLimited, UsageExhausted
from worker.upstream.official import LEGACY_ROUTE, VIDEO_ROUTE, OfficialClient, OfficialProvider
from worker.upstream.retry import RetryPolicy

KEY = "luma-key-0123456789abcdef"
ONE_OFFICIAL = [
    OfficialAccountSpec(name="api-1", key=KEY, credits_cents=200, max_concurrency=2, creates_per_minute=3)
]
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, budget_seconds=2.0)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Routes:
    """What the worker's on_create_route does, minus Redis."""

    def __init__(self) -> None:
        self.remembered: list[str] = []

    async def __call__(self, route: str) -> None:
        self.remembered.append(route)


def provider(
    simulator: RunningSimulator, session: aiohttp.ClientSession, *, key: str = KEY, **kwargs: Any
) -> OfficialProvider:
    client = OfficialClient(
        session, base_url=simulator.url + PREFIX, api_key=key, account="api-1", retry=FAST, **kwargs
    )
    return OfficialProvider(client)


def record(prompt: str, **fields: Any) -> GenerationRecord:
    return GenerationRecord.new("owner", CreateRequest(prompt=prompt, **fields))


@simulator_with(official_accounts=ONE_OFFICIAL, pending_seconds=0.05, processing_seconds=0.1)
async def test_a_create_is_followed_from_queued_to_a_completed_video(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """queued -> pending, dreaming -> processing, completed with assets.video as the video URL."""
    api = provider(simulator, session)
    created = await api.create(record("a lighthouse", model="ray-flash-2", resolution="540p"))
    assert created.state == "pending"
    assert created.prompt == "a lighthouse"
    [made] = simulator.state.generation_reports()
    assert made["model"] == "ray-flash-2" and made["cost_cents"] == 14

    async def completed() -> bool:
        return (await api.get(created.id)).state == "completed"

    await wait_until(completed, within=5)
    reading = await api.get(created.id)
    assert reading.video_url and reading.video_url.endswith("/video.mp4")
    [listed] = await api.list_recent(offset=0, limit=10)
    assert listed.id == created.id and listed.created_ts is not None
    assert (await api.usage()).available == 200 - 14


@simulator_with(official_accounts=ONE_OFFICIAL, failure_rate=1.0, pending_seconds=0, processing_seconds=0)
async def test_a_failed_generation_carries_its_failure_reason(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """failed with failure_reason: the reason is the failure message."""
    api = provider(simulator, session)
    created = await api.create(record("doomed", model="ray-1-6"))
    reading = await api.get(created.id)
    assert reading.state == "failed"
    assert reading.failure_message == "failure_rate"


@simulator_with(official_accounts=ONE_OFFICIAL, official_video_route=False)
async def test_an_api_without_the_video_route_gets_the_older_one_and_it_is_remembered(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A 404 on POST /generations/video: POST /generations, once, and the route is kept."""
    routes = Routes()
    api = provider(simulator, session, on_create_route=routes)
    await api.create(record("old api", model="ray-1-6"))
    assert routes.remembered == [LEGACY_ROUTE]
    again = provider(simulator, session, create_route=LEGACY_ROUTE, on_create_route=routes)
    await again.create(record("old api again", model="ray-1-6"))
    posts = [r.path for r in simulator.state.requests(method="POST")]
    assert posts == [PREFIX + VIDEO_ROUTE, PREFIX + LEGACY_ROUTE, PREFIX + LEGACY_ROUTE]
    assert len(simulator.state.generation_reports()) == 2


@simulator_with(official_accounts=ONE_OFFICIAL, official_retry_after_seconds=7, processing_seconds=30)
async def test_limits_credits_and_keys_surface_as_the_error_tree(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """429 beyond concurrency (with Retry-After), 402 past the balance, 401 for a bad key, 404."""
    api = provider(simulator, session)
    await api.create(record("one", model="ray-2", resolution="540p"))
    await api.create(record("two", model="ray-2", resolution="540p"))
    with pytest.raises(RateLimited) as limited:
        await api.create(record("three", model="ray-2", resolution="540p"))
    assert limited.value.retry_after == 7
    simulator.state.official_account("api-1").max_concurrency = 10
    with pytest.raises(UsageExhausted):
        await api.create(record("too dear", model="ray-2", resolution="4k"))
    with pytest.raises(GenerationNotFound):
        await api.get("00000000-0000-0000-0000-000000000000")
    wrong = provider(simulator, session, key="not-a-key-of-anyone")
    with pytest.raises(AccountExpired) as expired:
        await wrong.usage()
    assert "not-a-key" not in str(expired.value)
    stats = simulator.state.account_stats()["api-1"]
    assert stats["credits_cents"] == 200 - 80 and stats["rejected_concurrency"] == 1


@simulator_with(official_accounts=ONE_OFFICIAL, processing_seconds=30)
async def test_creates_per_minute_are_refused_past_the_limit(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """The fourth create within a minute on a 3-a-minute key is a 429 without Retry-After."""
    simulator.state.official_account("api-1").max_concurrency = 10
    api = provider(simulator, session)
    for n in range(3):
        await api.create(record(f"create {n}", model="ray-flash-2", resolution="540p"))
    with pytest.raises(RateLimited) as limited:
        await api.create(record("create 3", model="ray-flash-2", resolution="540p"))
    assert limited.value.retry_after is None
    assert simulator.state.account_stats()["api-1"]["max_creates_in_a_minute"] == 3


@simulator_with(official_accounts=ONE_OFFICIAL, pending_seconds=0.05, processing_seconds=0.05)
async def test_a_create_calls_back_its_callback_url_on_each_change_and_the_url_is_redacted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Callbacks POST the generation object for dreaming and completed; the echo hides the URL."""
    received: list[dict[str, Any]] = []

    async def receive(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append(await request.json())
        return aiohttp.web.Response(status=200 if len(received) > 1 else 500)

    app = aiohttp.web.Application()
    app.router.add_post("/hook", receive)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        api = provider(simulator, session)
        created = await api.create(record("call me"), callback_url=f"http://127.0.0.1:{port}/hook")
        assert created.raw["request"]["callback_url"] == "(redacted)"
        await wait_until(lambda: len(received) >= 3, within=5)
    finally:
        await runner.cleanup()
    states = [body["state"] for body in received]
    # The first delivery was answered 500 and retried; each change is its own delivery.
    assert states.count("dreaming") == 2 and states.count("completed") == 1, states
