"""Webhooks through HTTP with real worker processes: signed, retried, in order, never lost, never inward.

Every receiver here is an aiohttp app on a loopback port (tests/fixtures/receiver.py), so every
worker that sends to one runs with WEBHOOK_ALLOW_PRIVATE_NETWORKS=true; the delivery-time refusal
is shown with addresses nothing listens on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cli.ports import free_port
from simulator.testing import RunningSimulator
from tests.e2e.helpers import create_many, wait_all_terminal
from tests.fixtures.receiver import Hit, Receiver
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, TEST_KEYS, WorkerProcess, accounts_for, api_settings, headers

ALICE, BOB = TEST_KEYS
# Retries a fraction of a second apart, so a schedule runs out within a test.
HOOK_WORKER: dict[str, object] = {
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "WEBHOOK_RETRY_SCHEDULE": "0.3,0.3,0.3",
    "WEBHOOK_TIMEOUT_SECONDS": 3,
}
WEBHOOK_STATES = {"processing", "completed", "failed"}

Api = TestClient[Any, Any]


@pytest_asyncio.fixture
async def hook_api(redis_url: str) -> AsyncIterator[Api]:
    """The api with private callback URLs allowed at create, as the dev stack runs it."""
    from api.app import create_app

    settings = api_settings(redis_url, webhook_allow_private_networks=True)
    client: Api = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@dataclass
class Hooks:
    """What a webhook test works with: the api, a receiver, Redis, and workers on the simulator."""

    api: Api
    receiver: Receiver
    redis: Redis
    simulator: RunningSimulator
    start: Callable[..., WorkerProcess]

    def start_worker(self, limits: dict[str, int], **settings: object) -> WorkerProcess:
        """A worker on these simulator accounts (name -> slots), with HOOK_WORKER and `settings`."""
        return self.start(accounts_for(self.simulator, limits), **{**HOOK_WORKER, **settings})


@pytest_asyncio.fixture
async def hooks(
    hook_api: Api,
    receiver: Receiver,
    redis: Redis,
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
) -> Hooks:
    return Hooks(hook_api, receiver, redis, simulator, start_worker)


async def expected_webhooks(api: Api, gen_id: str, key: str = ALICE) -> list[tuple[str, str]]:
    """(webhook-id, type) of every event the log says this generation owes its receiver, in order."""
    response = await api.get(f"/api/generations/{gen_id}/events", headers=headers(key))
    assert response.status == 200
    return [
        (f"msg_{event['id']}", f"generation.{event['state']}")
        for event in (await response.json())["data"]
        if event["state"] != event["prev_state"] and event["state"] in WEBHOOK_STATES
    ]


async def secret_of(api: Api, key: str = ALICE) -> str:
    response = await api.get("/api/webhooks/secret", headers=headers(key))
    assert response.status == 200
    secret: str = (await response.json())["data"]["secret"]
    return secret


async def deliveries_of(api: Api, gen_id: str, key: str = ALICE) -> list[dict[str, Any]]:
    response = await api.get(f"/api/generations/{gen_id}/deliveries", headers=headers(key))
    assert response.status == 200, await response.text()
    shown: list[dict[str, Any]] = (await response.json())["data"]
    return shown


def first_deliveries(receiver: Receiver, gen_id: str) -> list[tuple[str, str]]:
    """(webhook-id, type) of each event's first 2xx at the receiver, in the order they arrived."""
    seen: list[tuple[str, str]] = []
    for hit in receiver.delivered():
        if hit.generation_id == gen_id and hit.webhook_id not in {wid for wid, _ in seen}:
            seen.append((hit.webhook_id, hit.type))
    return seen


async def wait_delivered(receiver: Receiver, expected: list[tuple[str, str]], within: float = 30) -> None:
    wanted = {wid for wid, _ in expected}
    await wait_until(lambda: wanted <= {hit.webhook_id for hit in receiver.delivered()}, within, 0.05)


@simulator_with(pending_seconds=0.05, processing_seconds=0.5)
async def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt_same_id_verified(
    hooks: Hooks,
) -> None:
    """500, 500, 200: three attempts per event, one webhook-id, one body, each verified (standardwebhooks)."""
    metrics_port = free_port()
    hooks.start_worker({"sim-1": 1}, WORKER_METRICS_PORT=metrics_port)
    hooks.receiver.respond = lambda hit, nth: 500 if nth <= 2 else 200
    [gen_id] = await create_many(hooks.api, ["a fox, hooked"], callback_url=hooks.receiver.url())
    await wait_all_terminal(hooks.redis, [gen_id], within=30)
    expected = await expected_webhooks(hooks.api, gen_id)
    assert expected[-1][1] == "generation.completed"
    await wait_delivered(hooks.receiver, expected)

    secret = await secret_of(hooks.api)
    for wid, kind in expected:
        hits = [hit for hit in hooks.receiver.hits if hit.webhook_id == wid]
        assert [hit.status for hit in hits] == [500, 500, 200]
        assert len({hit.body for hit in hits}) == 1, "every retry carries the same body"
        for hit in hits:
            assert Webhook(secret).verify(hit.body, hit.headers)["type"] == kind
            assert hit.headers["content-type"] == "application/json"
    # `data` is the generation exactly as GET shows it at that moment: here, its end.
    [completed] = [hit for hit in hooks.receiver.delivered() if hit.type == "generation.completed"]
    detail = await hooks.api.get(f"/api/generations/{gen_id}", headers=headers())
    assert completed.payload["data"] == (await detail.json())["data"]
    assert completed.payload["data"]["video"]["url"]
    assert completed.payload["timestamp"].endswith("Z")
    # The worker's metrics counted each attempt by its outcome (once it has recorded the last one,
    # which it does after the receiver answered).
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    wanted = {"failed": 2 * len(expected), "delivered": len(expected)}
    seen: dict[str, float] = {}

    async def counted() -> bool:
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as answer:
            exposition = await answer.text()
        seen.clear()
        seen.update(
            (sample.labels["outcome"], sample.value)
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "luma_queue_webhook_deliveries_total"
        )
        return seen == wanted

    try:
        await wait_until(counted, within=10, interval=0.05)
    except AssertionError:
        raise AssertionError(f"webhook outcomes counted {seen}, expected {wanted}") from None


@simulator_with(pending_seconds=0.05, processing_seconds=1.5, failure_rate=0.5, seed=11)
async def test_each_generations_events_arrive_in_the_logs_order_and_a_failure_says_why(hooks: Hooks) -> None:
    """processing before completed or failed, per generation; generation.failed carries its failure_reason."""
    # Retried every 0.3 s for long enough that nothing is given up while the hooks.receiver is closed.
    hooks.start_worker({"sim-1": 3, "sim-2": 3}, WEBHOOK_RETRY_SCHEDULE=",".join(["0.3"] * 100))
    # Closed until every generation has ended: each one's later events pile up behind its first.
    is_open = False
    hooks.receiver.respond = lambda hit, nth: 200 if is_open else 503
    ids = await create_many(hooks.api, [f"ordered {n}" for n in range(6)], callback_url=hooks.receiver.url())
    found = await wait_all_terminal(hooks.redis, ids, within=60)
    assert {record.state for record in found} == {"completed", "failed"}, "the seed gives both outcomes"
    is_open = True

    saw_processing = False
    for record in found:
        expected = await expected_webhooks(hooks.api, record.id)
        assert expected[-1][1] == f"generation.{record.state}"
        saw_processing |= expected[0][1] == "generation.processing" and len(expected) == 2
        await wait_delivered(hooks.receiver, expected)
        assert first_deliveries(hooks.receiver, record.id) == expected
        # Not even a failed attempt of a later event comes before an earlier one is delivered.
        order = [wid for wid, _ in expected]
        arrived = [
            order.index(hit.webhook_id) for hit in hooks.receiver.hits if hit.generation_id == record.id
        ]
        assert arrived == sorted(arrived)
        [last] = [hit for hit in hooks.receiver.delivered() if hit.webhook_id == expected[-1][0]]
        if record.state == "failed":
            assert last.payload["data"]["state"] == "failed"
            assert last.payload["data"]["failure_reason"] == "upstream_failed"
    assert saw_processing, "with 1.5 s of rendering the poller sees it running"


@simulator_with(pending_seconds=0.05, processing_seconds=0.5)
async def test_a_worker_killed_while_deliveries_are_due_loses_none(hooks: Hooks) -> None:
    """SIGKILL with one attempt in flight and others in backoff: another worker takes over, all arrive."""
    pool = {"sim-1": 2, "sim-2": 2}
    first = hooks.start_worker(pool, WEBHOOK_RETRY_SCHEDULE="1,1,1,1,1")
    killed = asyncio.Event()

    async def respond(hit: Hit, nth: int) -> int:
        if len(hooks.receiver.seen) == 1 and nth == 1:
            await killed.wait()  # the attempt its sender never sees the end of
        return 500 if nth <= 2 else 200

    hooks.receiver.respond = respond
    ids = await create_many(hooks.api, [f"survivor {n}" for n in range(4)], callback_url=hooks.receiver.url())
    await wait_all_terminal(hooks.redis, ids, within=60)
    expected = {gen_id: await expected_webhooks(hooks.api, gen_id) for gen_id in ids}
    await wait_until(lambda: len(hooks.receiver.hits) >= 2, within=30, interval=0.02)
    owed = {wid for events in expected.values() for wid, _ in events}
    assert owed - {hit.webhook_id for hit in hooks.receiver.delivered()}, (
        "deliveries were still due at the kill"
    )

    first.kill()
    killed.set()
    hooks.start_worker(pool, WEBHOOK_RETRY_SCHEDULE="1,1,1,1,1")
    for gen_id in ids:
        await wait_delivered(hooks.receiver, expected[gen_id], within=60)
        assert first_deliveries(hooks.receiver, gen_id) == expected[gen_id]


async def test_one_holders_secret_signs_nothing_of_anothers(hooks: Hooks) -> None:
    """alice's webhooks verify with alice's secret only, bob's with bob's only."""
    hooks.start_worker({"sim-1": 2})
    [alice_gen] = await create_many(
        hooks.api, ["alice's"], key=ALICE, callback_url=hooks.receiver.url("/alice")
    )
    [bob_gen] = await create_many(hooks.api, ["bob's"], key=BOB, callback_url=hooks.receiver.url("/bob"))
    await wait_all_terminal(hooks.redis, [alice_gen, bob_gen], within=30)
    await wait_delivered(hooks.receiver, await expected_webhooks(hooks.api, alice_gen, ALICE))
    await wait_delivered(hooks.receiver, await expected_webhooks(hooks.api, bob_gen, BOB))

    alice, bob = Webhook(await secret_of(hooks.api, ALICE)), Webhook(await secret_of(hooks.api, BOB))
    for path, own, other in (("/alice", alice, bob), ("/bob", bob, alice)):
        hits = hooks.receiver.delivered(path)
        assert hits
        for hit in hits:
            own.verify(hit.body, hit.headers)
            with pytest.raises(WebhookVerificationError):
                other.verify(hit.body, hit.headers)


async def test_after_a_rotation_later_attempts_are_signed_with_the_new_secret(hooks: Hooks) -> None:
    """The first attempt, held open until the rotation, has the old signature; every later one the new."""
    hooks.start_worker({"sim-1": 1})
    old = await secret_of(hooks.api)
    rotated = asyncio.Event()

    async def hold_the_first(hit: Hit, nth: int) -> int:
        if len(hooks.receiver.seen) == 1 and nth == 1:
            await rotated.wait()
            return 500
        return 200

    hooks.receiver.respond = hold_the_first
    [gen_id] = await create_many(hooks.api, ["rotating"], callback_url=hooks.receiver.url())
    await wait_until(lambda: bool(hooks.receiver.seen), within=30, interval=0.02)
    response = await hooks.api.post("/api/webhooks/secret/rotate", headers=headers())
    assert response.status == 200
    new = (await response.json())["data"]["secret"]
    rotated.set()
    assert new != old and new == await secret_of(hooks.api)

    await wait_all_terminal(hooks.redis, [gen_id], within=30)
    await wait_delivered(hooks.receiver, await expected_webhooks(hooks.api, gen_id))
    first, *later = hooks.receiver.hits
    assert first.status == 500 and later
    Webhook(old).verify(first.body, first.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(first.body, first.headers)
    for hit in later:
        Webhook(new).verify(hit.body, hit.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(hit.body, hit.headers)


async def test_deliveries_show_every_attempt_to_the_owner_and_an_admin_redelivery_resends_in_order(
    hooks: Hooks,
) -> None:
    """/deliveries: type, webhook-id, each attempt (number, time, status, next due); 404 to others."""
    hooks.start_worker({"sim-1": 1})
    hooks.receiver.respond = lambda hit, nth: 500 if nth == 1 else 200
    [gen_id] = await create_many(hooks.api, ["observed"], callback_url=hooks.receiver.url())
    [plain_id] = await create_many(hooks.api, ["no hook"])
    await wait_all_terminal(hooks.redis, [gen_id, plain_id], within=30)
    expected = await expected_webhooks(hooks.api, gen_id)
    await wait_delivered(hooks.receiver, expected)

    shown = await deliveries_of(hooks.api, gen_id)
    assert [(item["webhook_id"], item["type"]) for item in shown] == expected
    for item in shown:
        assert item["state"] == "delivered" and item["next_attempt_at"] is None
        failed, delivered = item["attempts"]
        assert (failed["attempt"], failed["status"], failed["outcome"]) == (1, 500, "failed")
        assert failed["next_attempt_at"] is not None and failed["error"] is None
        assert (delivered["attempt"], delivered["status"], delivered["outcome"]) == (2, 200, "delivered")
        assert delivered["next_attempt_at"] is None and delivered["at"] >= failed["at"]
    assert await deliveries_of(hooks.api, gen_id, ADMIN_KEY) == shown
    assert await deliveries_of(hooks.api, plain_id) == []

    for key, path in (
        (BOB, f"/api/generations/{gen_id}/deliveries"),
        (BOB, "/api/generations/nope/deliveries"),
    ):
        response = await hooks.api.get(path, headers=headers(key))
        assert response.status == 404 and (await response.json())["code"] == "not_found"

    redeliver = f"/api/admin/generations/{gen_id}/redeliver"
    assert (await hooks.api.post(redeliver, headers=headers(ALICE))).status == 401
    missing = await hooks.api.post("/api/admin/generations/nope/redeliver", headers=headers(ADMIN_KEY))
    assert missing.status == 404
    plain = await hooks.api.post(f"/api/admin/generations/{plain_id}/redeliver", headers=headers(ADMIN_KEY))
    assert plain.status == 409 and (await plain.json())["code"] == "nothing_to_redeliver"

    before = len(hooks.receiver.hits)
    response = await hooks.api.post(redeliver, headers=headers(ADMIN_KEY))
    assert response.status == 202, await response.text()
    await wait_until(lambda: len(hooks.receiver.hits) >= before + len(expected), within=30, interval=0.05)
    again = hooks.receiver.hits[before:]
    assert [(hit.webhook_id, hit.type) for hit in again] == expected, "the same events, in the same order"
    secret = await secret_of(hooks.api)
    for hit in again:
        Webhook(secret).verify(hit.body, hit.headers)

    async def third_attempts_recorded() -> bool:
        return all(len(item["attempts"]) == 3 for item in await deliveries_of(hooks.api, gen_id))

    await wait_until(third_attempts_recorded, within=10, interval=0.05)


async def test_a_receiver_that_never_accepts_is_given_up_after_the_schedule_with_the_reason(
    hooks: Hooks,
) -> None:
    """Always 503, two retries: three attempts per event, given up with "HTTP 503"; the next event goes on."""
    hooks.start_worker({"sim-1": 1}, WEBHOOK_RETRY_SCHEDULE="0.2,0.2")
    hooks.receiver.respond = lambda hit, nth: 503
    [gen_id] = await create_many(hooks.api, ["unheard"], callback_url=hooks.receiver.url())
    await wait_all_terminal(hooks.redis, [gen_id], within=30)
    expected = await expected_webhooks(hooks.api, gen_id)

    async def all_given_up() -> bool:
        shown = await deliveries_of(hooks.api, gen_id)
        return len(shown) == len(expected) and all(item["state"] == "given_up" for item in shown)

    await wait_until(all_given_up, within=30, interval=0.1)
    for item in await deliveries_of(hooks.api, gen_id):
        assert item["given_up_reason"] == "HTTP 503" and item["next_attempt_at"] is None
        assert [(a["attempt"], a["status"], a["outcome"]) for a in item["attempts"]] == [
            (1, 503, "failed"),
            (2, 503, "failed"),
            (3, 503, "given_up"),
        ]
    # One event at a time: all of an event's attempts arrive before the next event's first.
    assert [hit.webhook_id for hit in hooks.receiver.hits] == [wid for wid, _ in expected for _ in range(3)]


async def test_a_callback_that_reaches_a_private_address_at_delivery_time_is_never_connected_to(
    hooks: Hooks,
) -> None:
    """Accepted at create (as if DNS said otherwise then), refused by the worker: an IP literal, a name."""
    hooks.start_worker({"sim-1": 2}, WEBHOOK_ALLOW_PRIVATE_NETWORKS="false", WEBHOOK_RETRY_SCHEDULE="0.1")
    # Ports nothing listens on: were the guard to let a request through, it would be refused instead.
    urls = [f"http://127.0.0.1:{free_port()}/hook", f"http://localhost:{free_port()}/hook"]
    ids = [(await create_many(hooks.api, [f"inward {url}"], callback_url=url))[0] for url in urls]
    await wait_all_terminal(hooks.redis, ids, within=30)

    for gen_id in ids:
        expected = await expected_webhooks(hooks.api, gen_id)

        async def given_up(gen_id: str = gen_id, count: int = len(expected)) -> bool:
            shown = await deliveries_of(hooks.api, gen_id)
            return len(shown) == count and all(item["state"] == "given_up" for item in shown)

        await wait_until(given_up, within=30, interval=0.1)
        for item in await deliveries_of(hooks.api, gen_id):
            assert "must not connect to" in item["given_up_reason"]
            assert all(attempt["status"] is None for attempt in item["attempts"])
            assert all("Connect call failed" not in attempt["error"] for attempt in item["attempts"])


async def test_a_cancel_sends_generation_failed_even_when_made_before_any_worker_ran(hooks: Hooks) -> None:
    """Cancelled while no worker is up: the first worker reads the log from its start, sends failed."""
    [gen_id] = await create_many(hooks.api, ["taken back"], callback_url=hooks.receiver.url())
    cancel = await hooks.api.post(f"/api/generations/{gen_id}/cancel", headers=headers())
    assert cancel.status == 200, await cancel.text()
    expected = await expected_webhooks(hooks.api, gen_id)
    assert [kind for _, kind in expected] == ["generation.failed"]

    hooks.start_worker({"sim-1": 1})
    await wait_delivered(hooks.receiver, expected)
    [hit] = hooks.receiver.delivered()
    assert hit.payload["data"]["state"] == "failed"
    assert hit.payload["data"]["failure_reason"] == "cancelled"
    Webhook(await secret_of(hooks.api)).verify(hit.body, hit.headers)


async def test_a_batchs_callback_url_serves_every_item_that_names_none(hooks: Hooks) -> None:
    """The batch's callback_url for two items, an item's own for the third: each gets its own events."""
    hooks.start_worker({"sim-1": 3})
    items = [
        {"prompt": "one"},
        {"prompt": "two"},
        {"prompt": "three", "callback_url": hooks.receiver.url("/own")},
    ]
    response = await hooks.api.post(
        "/api/generations/batch",
        json={"items": items, "callback_url": hooks.receiver.url("/batch")},
        headers=headers(),
    )
    assert response.status == 200, await response.text()
    ids = [generation["id"] for generation in (await response.json())["data"]]
    await wait_all_terminal(hooks.redis, ids, within=30)
    for gen_id in ids:
        await wait_delivered(hooks.receiver, await expected_webhooks(hooks.api, gen_id))
    by_path = {
        path: {hit.generation_id for hit in hooks.receiver.delivered(path)} for path in ("/batch", "/own")
    }
    assert by_path == {"/batch": set(ids[:2]), "/own": {ids[2]}}
