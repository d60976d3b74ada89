"""The whole path through HTTP: api -> Redis -> worker process -> simulator -> Redis -> api."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tests.fixtures.simulator import wait_until
from tests.fixtures.stack import TEST_KEYS, Stack, headers
from tests.images import PNG  # a real image: the api decodes what it is sent


async def create(
    client: TestClient[Any, Any], prompt: str, key: str = TEST_KEYS[0], **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/generations/create", json={"prompt": prompt, **extra}, headers=headers(key)
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["message"] == "Success"
    generation: dict[str, Any] = body["data"][0]
    return generation


async def detail(client: TestClient[Any, Any], gen_id: str, key: str = TEST_KEYS[0]) -> dict[str, Any]:
    response = await client.get(f"/api/generations/{gen_id}", headers=headers(key))
    assert response.status == 200, await response.text()
    data: dict[str, Any] = (await response.json())["data"]
    return data


async def test_create_runs_through_the_worker_to_a_completed_video(stack: Stack) -> None:
    """A created generation is pending at once, then completed with a video URL that serves a file."""
    stack.start_worker(stack.pool({"sim-1": 2}))
    generation = await create(stack.api, "A kitten in motion")
    assert generation["state"] == "pending"
    assert generation["video"] is None

    seen_states: list[str] = []

    async def completed() -> bool:
        current = await detail(stack.api, generation["id"])
        seen_states.append(current["state"])
        return bool(current["state"] == "completed")

    await wait_until(completed, within=20, interval=0.02)
    final = await detail(stack.api, generation["id"])
    assert final["id"] == generation["id"]
    assert final["prompt"] == "A kitten in motion"
    assert final["upstream_id"]
    assert seen_states[0] == "pending"
    async with aiohttp.ClientSession() as session, session.get(final["video"]["url"]) as video:
        assert video.status == 200
        assert len(await video.read()) > 0
    [upstream] = stack.simulator.state.generation_reports()
    assert upstream["prompt"] == "A kitten in motion"
    assert upstream["id"] == final["upstream_id"]


async def test_reads_are_served_from_redis_without_calling_the_upstream(stack: Stack) -> None:
    """Once the worker is gone, list, detail and usage still answer, and the upstream sees nothing."""
    worker = stack.start_worker(stack.pool({"sim-1": 3}))
    ids = [(await create(stack.api, f"read test {n}"))["id"] for n in range(3)]

    async def all_completed() -> bool:
        return all([(await detail(stack.api, gen_id))["state"] == "completed" for gen_id in ids])

    await wait_until(all_completed, within=20)
    assert worker.terminate() == 0
    stack.simulator.state.clear_requests()

    listed = await stack.api.get("/api/generations?offset=0&limit=10", headers=headers())
    assert [item["id"] for item in (await listed.json())["data"]] == list(reversed(ids))
    assert (await detail(stack.api, ids[0]))["video"]["url"]
    usage = await (await stack.api.get("/api/generations/usage", headers=headers())).json()
    assert usage["data"]["capacity"] == 150
    assert usage["data"]["available"] == 147
    assert stack.simulator.state.requests() == []


async def test_upload_puts_the_bytes_upstream_and_its_generation_runs_on_that_account(stack: Stack) -> None:
    """Upload answers once public_url serves our bytes; a create using it runs where the image is."""
    stack.start_worker(stack.pool({"sim-1": 1, "sim-2": 1, "sim-3": 1}))
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="cat.png", content_type="image/png")
    response = await stack.api.post("/api/generations/upload", data=form, headers=headers())
    assert response.status == 200, await response.text()
    uploaded = (await response.json())["data"]
    assert set(uploaded) >= {"id", "presigned_url", "public_url"}
    async with aiohttp.ClientSession() as session, session.get(uploaded["public_url"]) as image:
        assert image.status == 200
        assert await image.read() == PNG

    holder = stack.simulator.state.uploaded(uploaded["id"])
    assert holder is not None
    generation = await create(stack.api, "the cat, animated", image=uploaded["public_url"])

    async def completed() -> bool:
        return bool((await detail(stack.api, generation["id"]))["state"] == "completed")

    await wait_until(completed, within=20)
    [upstream] = stack.simulator.state.generation_reports()
    assert upstream["image_url"] == uploaded["public_url"]
    assert upstream["account"] == holder.account


async def test_a_create_whose_image_is_gone_upstream_fails_saying_so(stack: Stack) -> None:
    """An upload the upstream no longer has (expired, or a simulator that forgot it) ends the
    generation `upstream_image_missing`, not a generic `upstream_failed`."""
    stack.start_worker(stack.pool({"sim-1": 1}))
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="cat.png", content_type="image/png")
    response = await stack.api.post("/api/generations/upload", data=form, headers=headers())
    assert response.status == 200, await response.text()
    uploaded = (await response.json())["data"]
    del stack.simulator.state.uploads[uploaded["id"]]  # the upstream lost it

    generation = await create(stack.api, "the cat, animated", image=uploaded["public_url"])

    async def failed() -> bool:
        return bool((await detail(stack.api, generation["id"]))["state"] == "failed")

    await wait_until(failed, within=20)
    final = await detail(stack.api, generation["id"])
    assert final["failure_reason"] == "upstream_image_missing", final
    assert "image not found" in final["failure_message"]
