"""GET /metrics and /readyz on the api in-process, on a real Redis (no worker: what the api alone
knows, and what it reads from Redis at scrape time)."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis_asyncio

from api.auth import owner_id
from shared.accounts import AccountRegistry
from shared.health import AccountState
from shared.settings import Settings
from shared.store import generation_store
from shared.tally import EventTally
from tests.api.conftest import KEY_A, KEY_B, ApiClient, MakeApi, account, auth
from tests.metrics import Samples, parse, value


async def scrape(api: ApiClient, **headers: str) -> Samples:
    response = await api.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(await response.text())


async def create(api: ApiClient, key: str, prompt: str) -> str:
    response = await api.post("/api/generations/create", json={"prompt": prompt}, headers=auth(key))
    assert response.status == 200, await response.text()
    gen_id: str = (await response.json())["data"][0]["id"]
    return gen_id


async def test_http_requests_are_counted_by_route_template_and_status(api: ApiClient) -> None:
    """Two reads of two ids count under one route template; a 404 and an unknown path too."""
    before = await scrape(api)
    for gen_id in ("one-id", "another-id"):
        response = await api.get(f"/api/generations/{gen_id}", headers=auth(KEY_A))
        assert response.status == 404
    assert (await api.get("/no/such/path")).status == 404
    after = await scrape(api)
    route = {"route": "/api/generations/{id}", "method": "GET", "status": "404"}
    name = "luma_queue_http_requests_total"
    assert value(after, name, **route) - value(before, name, **route) == 2
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, name, **unmatched) - value(before, name, **unmatched) == 1
    assert not any("one-id" in str(labels) for _, labels in after)
    count = "luma_queue_http_request_duration_seconds_count"
    timed = {"route": "/api/generations/{id}", "method": "GET"}
    assert value(after, count, **timed) - value(before, count, **timed) == 2


async def test_the_pool_is_read_from_redis_at_scrape_time(api: ApiClient, registry: AccountRegistry) -> None:
    """Queue depth in all and per holder, accepted generations, and each account's slots and state."""
    await registry.sync_from_settings([account("main", max_concurrency=4), account("spare")])
    await registry.mark("spare", AccountState.EXPIRED, "401 from the upstream")
    for prompt in ("one", "two", "three"):
        await create(api, KEY_A, prompt)
    await create(api, KEY_B, "four")

    samples = await scrape(api)
    assert value(samples, "luma_queue_queue_depth") == 4
    assert value(samples, "luma_queue_holder_queue_depth", holder=owner_id(KEY_A)) == 3
    assert value(samples, "luma_queue_holder_queue_depth", holder=owner_id(KEY_B)) == 1
    assert value(samples, "luma_queue_generations_accepted_total") == 4
    assert value(samples, "luma_queue_account_concurrency_limit", account="main") == 4
    assert value(samples, "luma_queue_account_in_flight", account="main") == 0
    assert value(samples, "luma_queue_account_state", account="main", state="active") == 1
    assert value(samples, "luma_queue_account_state", account="spare", state="expired") == 1
    assert value(samples, "luma_queue_account_state", account="spare", state="active") == 0
    assert value(samples, "luma_queue_account_usable", account="main") == 1
    assert value(samples, "luma_queue_account_usable", account="spare") == 0

    # A cancel ends one: it is counted as failed with its reason, and timed.
    gen_id = await create(api, KEY_A, "five")
    assert (await api.post(f"/api/generations/{gen_id}/cancel", headers=auth(KEY_A))).status == 200
    samples = await scrape(api)
    assert value(samples, "luma_queue_generations_accepted_total") == 5
    assert value(samples, "luma_queue_generations_finished_total", state="failed", reason="cancelled") == 1
    assert value(samples, "luma_queue_generation_duration_seconds_count") == 1
    assert value(samples, "luma_queue_generation_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "luma_queue_queue_depth") == 4
    # A scrape that finds nothing new counts nothing again.
    again = await scrape(api)
    assert value(again, "luma_queue_generations_accepted_total") == 5


async def test_concurrent_scrapes_count_each_event_once(api: ApiClient, redis_url: str) -> None:
    """Two processes folding the log at once (WATCH on the cursor) never count an entry twice."""
    await AccountRegistry(redis_asyncio.Redis.from_url(redis_url, decode_responses=True)).sync_from_settings(
        [account("main")]
    )
    for index in range(30):
        await create(api, KEY_A, f"prompt {index}")
    clients = [redis_asyncio.Redis.from_url(redis_url, decode_responses=True) for _ in range(4)]
    try:
        settings = Settings(_env_file=None, redis_url=redis_url)
        tallies = [EventTally(client, generation_store(client, settings)) for client in clients]
        results = await asyncio.gather(*(tally.read() for tally in tallies))
        final = await tallies[0].read()
    finally:
        for client in clients:
            await client.aclose()
    assert final.accepted == 30
    assert all(result.accepted <= 30 for result in results)


async def test_metrics_key_is_required_when_set(make_api: MakeApi) -> None:
    """With METRICS_KEY, /metrics answers only to `Authorization: Bearer <key>`, never showing it."""
    api = await make_api(metrics_key="scrape-me-please")
    refused = await api.get("/metrics")
    assert refused.status == 401
    body = await refused.json()
    assert body["code"] == "unauthorized" and "scrape-me-please" not in str(body)
    assert (await api.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    samples = await scrape(api, Authorization="Bearer scrape-me-please")
    assert ("luma_queue_queue_depth", frozenset()) in samples


async def test_metrics_are_open_without_a_metrics_key(api: ApiClient) -> None:
    """Unset METRICS_KEY: no key needed (the holders' keys are not asked for either)."""
    samples = await scrape(api)
    assert value(samples, "luma_queue_queue_depth") == 0


async def test_ready_needs_an_account_that_can_take_work(api: ApiClient, registry: AccountRegistry) -> None:
    """503 naming the failed check with no account, or none usable; 200 once one is active."""
    empty = await api.get("/readyz")
    assert empty.status == 503
    body = await empty.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["accounts"] == {"ok": False, "detail": "no account is configured"}

    await registry.sync_from_settings([account("main"), account("spare")])
    await registry.mark("main", AccountState.EXPIRED, "401")
    await registry.mark("spare", AccountState.SPENT, "no capacity")
    unusable = await (await api.get("/readyz")).json()
    assert unusable["checks"]["accounts"]["ok"] is False
    assert "main expired" in unusable["checks"]["accounts"]["detail"]
    assert "spare spent" in unusable["checks"]["accounts"]["detail"]

    await registry.mark("spare", AccountState.ACTIVE, "capacity again")
    ready = await api.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    # Liveness is not readiness: /healthz was 200 all along.
    assert (await api.get("/healthz")).status == 200


async def test_ready_is_503_while_redis_is_away(make_api: MakeApi) -> None:
    """A Redis that does not answer fails the redis check; the answer is still our JSON."""
    api = await make_api(redis_url="redis://127.0.0.1:9/0", redis_socket_timeout_seconds=1.5)
    response = await api.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["accounts"]["ok"] is False
