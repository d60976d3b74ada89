"""LumaClient against the bundled simulator: shapes, error classes, cookies, retries, uploads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from simulator.testing import RunningSimulator
from tests.fixtures.simulator import wait_until
from worker.upstream.errors import AccountExpired, UsageExhausted
from worker.upstream.web import (
    GenerationNotFound,
    LumaClient,
    LumaError,
    MalformedResponse,
    RateLimited,
    RequestNotSent,
    RetryPolicy,
    UpstreamRejected,
    UpstreamUnavailable,
)

CREATE = "/api/photon/v1/generations/"
LIST = "/api/photon/v1/user/generations/"
USAGE = "/api/photon/v1/subscription/usage"
UPLOAD = "/api/photon/v1/generations/file_upload"
ME = "/api/users/v1/me"
BODY = {"user_prompt": "a cat on a skateboard", "aspect_ratio": "16:9", "expand_prompt": False}
# Fast enough for tests, with room for a few attempts.
FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, budget_seconds=5.0)
ONCE = RetryPolicy(attempts=1)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def make_client(
    simulator: RunningSimulator,
    session: aiohttp.ClientSession,
    account: str = "sim-1",
    *,
    retry: RetryPolicy = FAST,
    **kwargs: Any,
) -> LumaClient:
    # The bare token, as an operator of an older account pastes it.
    token = simulator.state.account(account).token
    return LumaClient(session, base_url=simulator.url, cookie=token, account=account, retry=retry, **kwargs)


def requests_to(simulator: RunningSimulator, path: str, method: str | None = None) -> list[Any]:
    return [r for r in simulator.state.requests(path_contains=path, method=method) if r.path == path]


class CookieStore:
    """What the worker's on_cookie does, minus Redis: remember every value handed over."""

    def __init__(self) -> None:
        self.saved: list[str] = []

    async def __call__(self, cookie: str) -> None:
        self.saved.append(cookie)


# --- happy paths ---------------------------------------------------------------------------------


async def test_create_returns_element_0_of_the_201_array(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """create() sends the body as given and returns the new generation object."""
    client = make_client(simulator, simulator_session)
    body = {**BODY, "image_url": "https://example.com/cat.jpg", "loop": True}
    generation = await client.create(body)
    assert generation["prompt"] == BODY["user_prompt"]
    assert generation["state"] == "pending"
    stored = simulator.state.generations[generation["id"]]
    assert (stored.account, stored.image_url, stored.loop) == ("sim-1", "https://example.com/cat.jpg", True)
    [record] = requests_to(simulator, CREATE, "POST")
    assert record.status == 201


async def test_every_api_call_carries_browser_headers(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """The cookie, Origin, Referer and a browser User-Agent go with each call."""
    client = make_client(simulator, simulator_session)
    await client.me()
    [record] = requests_to(simulator, ME)
    assert record.cookie == "access_token=sim-token-1"
    assert record.origin == "https://lumalabs.ai"
    assert record.referer == "https://lumalabs.ai/"
    assert record.user_agent is not None and record.user_agent.startswith("Mozilla/5.0")


async def test_get_returns_the_generation(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """get() returns the generation object as the upstream sent it, unknown fields included."""
    client = make_client(simulator, simulator_session)
    created = await client.create(BODY)
    generation = await client.get(created["id"])
    assert generation["id"] == created["id"]
    assert {"state", "created_at", "video", "request"} <= generation.keys()


async def test_list_is_a_bare_array_newest_first(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """list() pages through the account's generations with offset and limit."""
    client = make_client(simulator, simulator_session)
    ids = [(await client.create({**BODY, "user_prompt": f"p{i}"}))["id"] for i in range(3)]
    first_page = await client.list(offset=0, limit=2)
    assert [g["id"] for g in first_page] == [ids[2], ids[1]]
    assert [g["id"] for g in await client.list(offset=2, limit=2)] == [ids[0]]
    assert requests_to(simulator, LIST)[0].query == "offset=0&limit=2"


async def test_usage_returns_capacity_and_plans(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """usage() returns consumed/capacity/available with subscription and plans."""
    client = make_client(simulator, simulator_session)
    await client.create(BODY)
    usage = await client.usage()
    assert (usage["consumed"], usage["capacity"], usage["available"]) == (1, 150, 149)
    assert usage["subscription"]["active"] is True
    assert {plan["capacity_per_month"] for plan in usage["plans"]} >= {30, 150, 430, 2030}


async def test_me_returns_the_user(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """me() returns the account's user object."""
    client = make_client(simulator, simulator_session, "sim-2")
    user = await client.me()
    assert user["id"] == simulator.state.account("sim-2").user_id


async def test_download_video_url_of_a_completed_generation(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """download_video_url() returns the link once the video exists."""
    client = make_client(simulator, simulator_session)
    generation_id = (await client.create(BODY))["id"]

    async def has_video() -> bool:
        return (await client.get(generation_id))["video"] is not None

    await wait_until(has_video)
    url = await client.download_video_url(generation_id)
    async with simulator_session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "video/mp4"


async def test_upload_sign_put_then_public_url_serves_the_bytes(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """sign_upload + put_upload store the bytes where public_url serves them, without our cookie."""
    client = make_client(simulator, simulator_session)
    slot = await client.sign_upload("photo.png")
    assert {"id", "presigned_url", "public_url"} <= slot.keys()
    assert requests_to(simulator, UPLOAD, "POST")[0].query == "file_type=image&filename=photo.png"

    await client.put_upload(slot["presigned_url"], PNG, "image/png")
    async with simulator_session.get(slot["public_url"]) as response:
        assert response.status == 200
        assert await response.read() == PNG
    [put] = simulator.state.requests(method="PUT")
    assert (put.cookie, put.origin, put.referer) == (None, None, None)


# --- error classes ---------------------------------------------------------------------------------


async def test_expired_account_raises_account_expired_without_retrying(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A 401 is AccountExpired, raised at once."""
    simulator.state.expire_account("sim-1")
    client = make_client(simulator, simulator_session)
    with pytest.raises(AccountExpired) as caught:
        await client.usage()
    assert caught.value.status == 401
    assert "Not authenticated" in str(caught.value)
    assert len(requests_to(simulator, USAGE)) == 1


async def test_spent_capacity_raises_usage_exhausted(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """ "Maximum usage limit exceeded" is UsageExhausted and bills nothing."""
    simulator.state.set_capacity("sim-1", capacity=30, consumed=30)
    client = make_client(simulator, simulator_session)
    with pytest.raises(UsageExhausted) as caught:
        await client.create(BODY)
    assert caught.value.detail == {"reason": "Maximum usage limit exceeded"}
    assert len(requests_to(simulator, CREATE, "POST")) == 1
    assert simulator.state.account("sim-1").creates == 0


async def test_validation_error_reads_as_location_and_message(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A 422 is UpstreamRejected with FastAPI's validation list made readable."""
    client = make_client(simulator, simulator_session)
    with pytest.raises(UpstreamRejected) as caught:
        await client.create({"aspect_ratio": "16:9"})
    assert caught.value.status == 422
    assert "body.user_prompt: Field required" in str(caught.value)
    assert isinstance(caught.value.detail, list)


async def test_unknown_generation_raises_generation_not_found(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """get() of another account's generation is GenerationNotFound, not retried."""
    other = await make_client(simulator, simulator_session, "sim-2").create(BODY)
    client = make_client(simulator, simulator_session)
    with pytest.raises(GenerationNotFound) as caught:
        await client.get(other["id"])
    assert caught.value.status == 404
    with pytest.raises(GenerationNotFound):
        await client.download_video_url(other["id"])
    assert len(simulator.state.requests(path_contains=other["id"], method="GET")) == 2


async def test_malformed_json_raises_upstream_unavailable(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A truncated 200 body is MalformedResponse (an UpstreamUnavailable) with a logged excerpt."""
    simulator.state.update_config({"malformed_rate": 1.0})
    client = make_client(simulator, simulator_session, retry=ONCE)
    with capture_logs() as logs, pytest.raises(MalformedResponse) as caught:
        await client.list()
    assert isinstance(caught.value, UpstreamUnavailable)
    assert caught.value.status == 200
    assert caught.value.body.startswith('{"id": ')
    [event] = [e for e in logs if e["event"] == "luma.malformed_response"]
    assert event["body"] == caught.value.body and event["account"] == "sim-1"


async def test_malformed_body_is_retried_for_reads(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """One malformed answer to list() is followed by a retry that succeeds."""
    simulator.state.fail_next(200, path_contains=LIST, body="<html>oops</html>", content_type="text/html")
    client = make_client(simulator, simulator_session)
    assert await client.list() == []
    assert len(requests_to(simulator, LIST)) == 2


async def test_create_answer_of_the_wrong_shape_is_malformed_and_not_retried(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A 201 that is not a non-empty array is MalformedResponse after exactly one create."""
    simulator.state.fail_next(201, path_contains=CREATE, method="POST", body=[])
    client = make_client(simulator, simulator_session)
    with pytest.raises(MalformedResponse) as caught:
        await client.create(BODY)
    assert caught.value.status == 201
    assert len(requests_to(simulator, CREATE, "POST")) == 1


# --- retries -------------------------------------------------------------------------------------


async def test_list_is_retried_through_two_503s(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Two 503s then a 200: list() succeeds on the third request."""
    simulator.state.fail_next(503, count=2, path_contains=LIST)
    client = make_client(simulator, simulator_session)
    with capture_logs() as logs:
        assert await client.list() == []
    assert [r.status for r in requests_to(simulator, LIST)] == [503, 503, 200]
    retries = [e for e in logs if e["event"] == "luma.retry"]
    assert [(e["operation"], e["attempt"], e["status"]) for e in retries] == [
        ("list", 1, 503),
        ("list", 2, 503),
    ]


async def test_create_on_503_raises_without_retrying(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A create answered 503 may have been billed: UpstreamUnavailable after one request."""
    simulator.state.fail_next(503, count=3, path_contains=CREATE, method="POST")
    client = make_client(simulator, simulator_session)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create(BODY)
    assert caught.value.status == 503
    assert not isinstance(caught.value, RequestNotSent)
    assert len(requests_to(simulator, CREATE, "POST")) == 1


async def test_create_timeout_is_unavailable_and_not_sent_again(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A create that times out after reaching the server is not repeated: it was billed."""
    simulator.state.update_config({"hang_after_create_seconds": 5.0})
    client = make_client(simulator, simulator_session, timeout=0.3)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create(BODY)
    assert not isinstance(caught.value, RequestNotSent)
    assert simulator.state.account("sim-1").creates == 1


async def test_attempts_bound_the_retries(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """After `attempts` failures the last error is raised."""
    simulator.state.fail_next(502, count=10, path_contains=USAGE, body="<html>Bad Gateway</html>")
    client = make_client(simulator, simulator_session, retry=RetryPolicy(attempts=3, base_delay=0.01))
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.usage()
    assert caught.value.status == 502
    assert caught.value.body == "<html>Bad Gateway</html>"
    assert len(requests_to(simulator, USAGE)) == 3


async def test_budget_bounds_the_retries(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A retry that would end past the time budget is not made."""
    simulator.state.fail_next(500, count=1000, path_contains=USAGE)
    policy = RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.05, budget_seconds=0.3)
    client = make_client(simulator, simulator_session, retry=policy)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await client.usage()
    assert time.monotonic() - started < 2.0
    assert 2 <= len(requests_to(simulator, USAGE)) < 1000


async def test_retry_after_of_a_429_is_honoured(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """list() waits the 429's Retry-After before trying again."""
    simulator.state.fail_next(429, path_contains=LIST, headers={"Retry-After": "1"})
    policy = RetryPolicy(base_delay=0.001, max_delay=5.0, budget_seconds=5.0)
    client = make_client(simulator, simulator_session, retry=policy)
    started = time.monotonic()
    assert await client.list() == []
    assert time.monotonic() - started >= 0.95
    first, second = requests_to(simulator, LIST)
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.95


async def test_create_on_429_raises_rate_limited_with_retry_after(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A 429 on create is left to the caller, with the server's hint parsed."""
    simulator.state.fail_next(
        429, path_contains=CREATE, method="POST", body={"detail": "Too many"}, headers={"Retry-After": "7"}
    )
    client = make_client(simulator, simulator_session)
    with pytest.raises(RateLimited) as caught:
        await client.create(BODY)
    assert caught.value.retry_after == 7.0
    assert len(requests_to(simulator, CREATE, "POST")) == 1


async def test_stopped_upstream_raises_request_not_sent(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A refused connection is RequestNotSent, for reads and creates alike."""
    await simulator.stop()
    client = make_client(simulator, simulator_session, retry=RetryPolicy(attempts=2, base_delay=0.01))
    with pytest.raises(RequestNotSent):
        await client.me()
    with pytest.raises(RequestNotSent) as caught:
        await client.create(BODY)
    assert caught.value.status is None
    assert "sim-token" not in str(caught.value)


async def test_create_is_retried_when_the_upstream_comes_back(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A create that was provably never sent is sent again within the budget, once."""
    await simulator.stop()
    policy = RetryPolicy(attempts=200, base_delay=0.02, max_delay=0.1, budget_seconds=10.0)
    client = make_client(simulator, simulator_session, retry=policy)
    with capture_logs() as logs:
        task = asyncio.create_task(client.create(BODY))
        await wait_until(lambda: any(e["event"] == "luma.retry" for e in logs))
        await simulator.start()
        generation = await asyncio.wait_for(task, 10)
    assert next(e["error"] for e in logs if e["event"] == "luma.retry") == "RequestNotSent"
    assert [g.id for g in simulator.state.account("sim-1").generations] == [generation["id"]]
    assert len(requests_to(simulator, CREATE, "POST")) == 1


# --- cookies -------------------------------------------------------------------------------------


async def test_rotated_cookie_is_merged_sent_back_and_stored(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Set-Cookie is merged into the cookie, handed to on_cookie and sent on the next call."""
    store = CookieStore()
    client = make_client(simulator, simulator_session, on_cookie=store)
    await client.me()
    assert client.cookie.startswith("access_token=sim-token-1; luma_session=")
    assert store.saved == [client.cookie]

    await client.usage()
    [usage_call] = requests_to(simulator, USAGE)
    assert usage_call.cookie == store.saved[0]
    assert len(store.saved) == 2 and store.saved[1] == client.cookie != store.saved[0]
    assert client.cookie.count("luma_session=") == 1


async def test_rotation_keeps_the_account_alive_past_its_token(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """Calling every few seconds with merged cookies outlives the 30-minute access token."""
    clock = [simulator.state.now()]
    simulator.state.now = lambda: clock[0]
    simulator.state.update_config({"session_ttl_seconds": 1800.0})
    client = make_client(simulator, simulator_session)
    for _ in range(10):  # 10 x 5 min = 50 min
        clock[0] += 300
        await client.me()
    with pytest.raises(AccountExpired):
        await make_client(simulator, simulator_session).me()  # the bare token alone is dead


async def test_set_cookie_on_an_error_is_merged_too(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A rotation carried by an error answer is not lost."""
    simulator.state.fail_next(500, path_contains=USAGE, headers={"Set-Cookie": "refresh_token=r9; Path=/"})
    store = CookieStore()
    client = make_client(simulator, simulator_session, retry=ONCE, on_cookie=store)
    with pytest.raises(UpstreamUnavailable):
        await client.usage()
    assert client.cookie == "access_token=sim-token-1; refresh_token=r9"
    assert store.saved == [client.cookie]


async def test_failing_cookie_store_does_not_lose_a_create(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """If on_cookie raises, create still returns its generation and the error is logged."""

    async def broken_store(cookie: str) -> None:
        raise ConnectionError("redis is down")

    client = make_client(simulator, simulator_session, on_cookie=broken_store)
    with capture_logs() as logs:
        generation = await client.create(BODY)
    assert generation["id"] in simulator.state.generations
    assert "luma_session=" in client.cookie
    assert [e["error"] for e in logs if e["event"] == "luma.cookie_store_failed"] == ["ConnectionError"]


async def test_cookie_never_reaches_errors_or_logs(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """An upstream that echoes the token gets it blanked out of the error and the logs."""
    simulator.state.fail_next(500, count=2, path_contains=ME, body="bad token sim-token-1 here")
    client = make_client(simulator, simulator_session, retry=RetryPolicy(attempts=2, base_delay=0.01))
    with capture_logs() as logs, pytest.raises(LumaError) as caught:
        await client.me()
    assert caught.value.body == "bad token *** here"
    assert caught.value.detail == "bad token *** here"
    assert "sim-token-1" not in str(caught.value)
    assert "sim-token-1" not in repr(client)
    assert logs and all("sim-token-1" not in repr(entry) for entry in logs)


async def test_session_with_a_cookie_jar_is_refused() -> None:
    """A shared session must not keep cookies, or accounts would leak into each other."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="DummyCookieJar"):
            LumaClient(session, base_url="http://127.0.0.1:1", cookie="t", account="a")


async def test_storage_errors_are_not_account_errors(
    simulator: RunningSimulator, simulator_session: aiohttp.ClientSession
) -> None:
    """A 403 from storage (bad signature) is UpstreamRejected, never AccountExpired or UsageExhausted."""
    client = make_client(simulator, simulator_session)
    slot = await client.sign_upload()
    tampered = slot["presigned_url"].replace("X-Amz-Signature=", "X-Amz-Signature=00")
    with pytest.raises(UpstreamRejected) as caught:
        await client.put_upload(tampered, PNG, "image/jpeg")
    assert caught.value.status == 403
    assert "SignatureDoesNotMatch" in caught.value.body
    assert "X-Amz-Signature" not in str(caught.value)
