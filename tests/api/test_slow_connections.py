"""Slow clients cannot starve the api: 300 connections trickling their headers a byte a second, into
an api whose open-file limit is 256, while another client's /healthz and detail are still answered
within a second, and the api's log stays a few lines long.

The slow clients behave like a slowloris tool: each opens a connection, sends a request line and
then one header byte a second, and replaces it a second or few after the api has closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import time
from collections import Counter

import pytest

from tests.fixtures.api_process import ApiProcess, ServeApi, exchange

KEY = "slow-test-key"
SLOW_CLIENTS = 300
OPEN_FILE_LIMIT = 256
PROBE_SECONDS = 6.0
# What "answered throughout" means for the other client: each answer within this.
ANSWER_WITHIN_SECONDS = 1.0
PROBE_EVERY_SECONDS = 0.1
BYTE_EVERY_SECONDS = 1.0
# A dropped connection is replaced after 1 to 3 s, each client at its own pace, as a slowloris
# tool refills its sockets on its next round.
REFILL_SECONDS = (1.0, 3.0)
# Lines the api may write besides one per request it answers, however many slow clients come.
OTHER_LOG_LINES = 20

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


async def slow_client(port: int, stop: asyncio.Event, seen: Counter[str], pace: random.Random) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            seen["refused"] += 1
        else:
            seen["opened"] += 1
            try:
                writer.write(b"GET /api/generations HTTP/1.1\r\nHost: api.test\r\nX-Slow: ")
                while not stop.is_set():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1024), BYTE_EVERY_SECONDS)
                        seen["closed by the api"] += 1
                        break  # the api answered (408/503) or closed: start over
            except OSError:
                seen["closed by the api"] += 1
            finally:
                writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pace.uniform(*REFILL_SECONDS))


async def timed(port: int, raw: bytes) -> tuple[int, float]:
    started = time.monotonic()
    answer = await exchange(port, raw, deadline_seconds=ANSWER_WITHIN_SECONDS)
    return answer.status, time.monotonic() - started


async def create_one(api: ApiProcess) -> str:
    body = b'{"prompt": "a fox"}'
    answer = await exchange(
        api.port,
        b"POST /api/generations/create HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n"
        + f"Secret-Key: {KEY}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    assert answer.status == 200, answer.raw
    [view] = answer.json()["data"]
    return str(view["id"])


@pytest.mark.parametrize("loop", LOOPS)
async def test_slow_connections_do_not_starve_other_clients_and_the_log_stays_small(
    serve_api: ServeApi, loop: str
) -> None:
    """Under 300 slow connections and 256 files, every /healthz and detail of another client is
    answered within a second; the cap was reached and kept by shedding, and said so in few lines."""
    api = serve_api(nofile=OPEN_FILE_LIMIT, secret_key=KEY, api_event_loop=loop)
    gen_id = await create_one(api)
    health = b"GET /healthz HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    detail = (
        f"GET /api/generations/{gen_id} HTTP/1.1\r\nHost: api.test\r\nSecret-Key: {KEY}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    stop = asyncio.Event()
    seen: Counter[str] = Counter()
    attackers = [
        asyncio.create_task(slow_client(api.port, stop, seen, random.Random(index)))
        for index in range(SLOW_CLIENTS)
    ]
    answers: list[tuple[int, float]] = []
    failures: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while seen["opened"] < SLOW_CLIENTS:  # every slow client has had a connection open
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
        until = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < until:
            for raw in (health, detail):
                try:
                    answers.append(await timed(api.port, raw))
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                    failures.append(f"{raw.split()[1].decode()}: {type(exc).__name__}")
            await asyncio.sleep(PROBE_EVERY_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    api.stop()

    assert not failures, (failures, seen)
    assert {status for status, _ in answers} == {200}
    assert len(answers) >= PROBE_SECONDS / (PROBE_EVERY_SECONDS + 2 * ANSWER_WITHIN_SECONDS)
    lines = [json.loads(line) for line in api.log().splitlines()]
    others = [line for line in lines if line["event"] != "request"]
    events = {line["event"] for line in others}
    assert "connection cap lowered to fit the open-file limit" in events
    assert "connection closed to make room: it had waited longest without a request" in events
    assert seen["closed by the api"] > SLOW_CLIENTS  # the slow clients were shed, again and again
    assert len(others) <= OTHER_LOG_LINES, [line["event"] for line in others]
    assert not [line for line in others if line["level"] == "error"]
