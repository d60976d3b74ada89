"""GET /api/generations/events: the live stream of a key holder's generations, over Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
import redis.asyncio as redis_asyncio

from shared.states import Phase
from shared.store import GenerationStore
from tests.api.conftest import KEY_A, KEY_B, ApiClient, MakeApi, auth


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[GenerationStore]:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield GenerationStore(client, retention_seconds=3600, default_generation_seconds=10)
    await client.aclose()


class Stream:
    """An open event stream, read frame by frame."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next_event(self, within: float = 5.0) -> dict[str, Any]:
        frame: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line == "" and frame:
                    return {"id": frame["id"], "event": frame["event"], "data": json.loads(frame["data"])}
                elif line:
                    name, _, value = line.partition(": ")
                    frame[name] = value

    async def comment(self, text: str, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while text not in self.comments:
                line = (await self.response.content.readline()).decode().strip()
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())


async def open_stream(api: ApiClient, key: str = KEY_A, **headers: str) -> Stream:
    response = await api.get("/api/generations/events", headers={**auth(key), **headers})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    stream = Stream(response)
    await stream.comment("connected")
    return stream


async def create(api: ApiClient, prompt: str, key: str = KEY_A) -> str:
    response = await api.post("/api/generations/create", json={"prompt": prompt}, headers=auth(key))
    gen_id: str = (await response.json())["data"][0]["id"]
    return gen_id


async def test_events_arrive_in_order_with_the_generation_as_detail_shows_it(
    api: ApiClient, store: GenerationStore
) -> None:
    stream = await open_stream(api)
    first, second = await create(api, "one"), await create(api, "two")
    await store.transition(first, Phase.CLAIMED, account="sim-1")
    got = [await stream.next_event() for _ in range(3)]
    assert [(event["event"], event["data"]["id"]) for event in got] == [
        ("generation", first),
        ("generation", second),
        ("generation", first),
    ]
    assert got[0]["data"]["prompt"] == "one" and got[0]["data"]["state"] == "pending"
    assert got[1]["data"]["queue_position"] == 2
    ids = [event["id"] for event in got]
    assert ids == sorted(ids, key=lambda entry: tuple(map(int, entry.split("-"))))


async def test_a_reconnect_with_last_event_id_gets_what_it_missed_then_the_live_tail(api: ApiClient) -> None:
    stream = await open_stream(api)
    await create(api, "seen")
    seen = await stream.next_event()
    stream.response.close()
    missed = [await create(api, f"missed {n}") for n in range(3)]

    resumed = await open_stream(api, **{"Last-Event-ID": seen["id"]})
    replayed = [(await resumed.next_event())["data"]["id"] for _ in range(3)]
    assert replayed == missed
    live = await create(api, "live")
    assert (await resumed.next_event())["data"]["id"] == live


async def test_one_holder_never_sees_anothers_events(api: ApiClient) -> None:
    bobs = await open_stream(api, KEY_B)
    await create(api, "alice's", KEY_A)
    mine = await create(api, "bob's", KEY_B)
    assert (await bobs.next_event())["data"]["id"] == mine


async def test_an_idle_stream_gets_heartbeats(make_api: MakeApi) -> None:
    api = await make_api(events_heartbeat_seconds=0.1)
    stream = await open_stream(api)
    await stream.comment("heartbeat", within=3)


async def test_the_key_may_come_as_a_query_parameter_on_this_route_only(api: ApiClient) -> None:
    """EventSource cannot send headers; everywhere else a key in the query is no key."""
    response = await api.get(f"/api/generations/events?key={KEY_A}")
    assert response.status == 200
    response.close()
    assert (await api.get(f"/api/generations?key={KEY_A}")).status == 401
    refused = await api.get("/api/generations/events?key=wrong")
    assert refused.status == 401 and (await refused.json())["code"] == "unauthorized"


async def test_a_malformed_last_event_id_is_400(api: ApiClient) -> None:
    response = await api.get("/api/generations/events", headers={**auth(KEY_A), "Last-Event-ID": "yesterday"})
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_query"


async def test_open_streams_end_when_the_api_shuts_down_instead_of_holding_it_up(api: ApiClient) -> None:
    """A stream never ends by itself: shutdown ends it, rather than waiting out its 60 s grace for it."""
    stream = await open_stream(api)
    async with asyncio.timeout(10):
        await api.server.close()
        assert (await stream.response.content.read()).strip() == b""  # ended by the server, not cut
