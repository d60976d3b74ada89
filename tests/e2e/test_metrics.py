"""The metrics move as generations do: the api's /metrics (read from Redis and the event log) and a
worker's own port (its requests to Luma), parsed with prometheus_client's parser."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from cli.ports import free_port
from tests.fixtures.simulator import wait_until
from tests.fixtures.stack import Stack, headers
from tests.metrics import Samples, parse, value

CREATE_ROUTE = "POST /api/photon/v1/generations/"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


async def api_metrics(api: TestClient[Any, Any]) -> Samples:
    response = await api.get("/metrics")
    assert response.status == 200
    return parse(await response.text())


async def worker_metrics(port: int) -> Samples | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            return parse(await answer.text())
    except aiohttp.ClientConnectionError:
        return None  # not listening yet


async def state_of(api: TestClient[Any, Any], gen_id: str) -> str:
    response = await api.get(f"/api/generations/{gen_id}", headers=headers())
    state: str = (await response.json())["data"]["state"]
    return state


async def test_counters_move_as_generations_complete(stack: Stack) -> None:
    """Three completed: accepted 3, finished completed 3, timed 3; the worker counted its 3 creates."""
    port = free_port()
    stack.start_worker(stack.pool({"sim-1": 2}), worker_metrics_port=port)
    ids = []
    for prompt in ("a fox", "a hare", "an owl"):
        response = await stack.api.post("/api/generations/create", json={"prompt": prompt}, headers=headers())
        assert response.status == 200, await response.text()
        ids.append((await response.json())["data"][0]["id"])

    async def all_completed() -> bool:
        return all([await state_of(stack.api, gen_id) == "completed" for gen_id in ids])

    await wait_until(all_completed, within=60, interval=0.1)

    samples = await api_metrics(stack.api)
    assert value(samples, "luma_queue_generations_accepted_total") == 3
    assert value(samples, "luma_queue_generations_finished_total", state="completed", reason="") == 3
    assert value(samples, "luma_queue_generation_duration_seconds_count") == 3
    assert value(samples, "luma_queue_generation_duration_seconds_sum") > 0
    assert value(samples, "luma_queue_queue_depth") == 0
    assert value(samples, "luma_queue_account_concurrency_limit", account="sim-1") == 2
    assert value(samples, "luma_queue_account_usable", account="sim-1") == 1
    create = {"route": "/api/generations/create", "method": "POST", "status": "200"}
    assert value(samples, "luma_queue_http_requests_total", **create) >= 3

    async def creates_counted() -> bool:
        found = await worker_metrics(port)
        return (
            found is not None
            and value(
                found, "luma_queue_upstream_requests_total", route=CREATE_ROUTE, status="201", account="sim-1"
            )
            == 3
        )

    await wait_until(creates_counted, within=20, interval=0.1)
    worker = await worker_metrics(port)
    assert worker is not None
    assert (
        value(
            worker, "luma_queue_upstream_request_duration_seconds_count", route=CREATE_ROUTE, account="sim-1"
        )
        == 3
    )
    # Routes by template: no upstream id (a uuid) in any label, however many generations were polled.
    requests = "luma_queue_upstream_requests_total"
    routes = {dict(labels)["route"] for name, labels in worker if name == requests}
    assert "GET /api/photon/v1/user/generations/" in routes  # the poller's list
    assert not [route for route in routes if UUID.search(route)], routes
