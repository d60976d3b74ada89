"""How the api process serves connections: deadlines for headers and bodies, idle keep-alive, the
connection cap, the event loop it names, and `--processes N` on one port. All against the real
process, over raw sockets."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from prometheus_client.parser import text_string_to_metric_families

from shared import keys
from tests.fixtures.api_process import ApiProcess, ServeApi, exchange, read_answer
from tests.images import PNG

KEY = "serving-test-key"
DEADLINE_SECONDS = 15.0
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: api.test\r\n\r\n"


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def closed_by_the_api(reader: asyncio.StreamReader) -> bool:
    """True once the api has closed the connection (EOF or reset), within the deadline."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE_SECONDS) == b""
    except ConnectionResetError:
        return True


def upload_request() -> bytes:
    boundary = "servingboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return (
        f"POST /api/generations/upload HTTP/1.1\r\nHost: api.test\r\nSecret-Key: {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_headers_that_do_not_arrive_in_time_get_408_and_the_connection_closes(
    serve_api: ServeApi,
) -> None:
    """Headers still incomplete API_HEADER_TIMEOUT_SECONDS after their first byte: 408 header_timeout."""
    api = serve_api(api_header_timeout_seconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: api.test\r\nX-Slow: a")  # and never the rest

    answer = await asyncio.wait_for(read_answer(reader), DEADLINE_SECONDS)

    assert (answer.status, answer.json()["code"]) == (408, "header_timeout")
    assert await closed_by_the_api(reader)
    writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408(serve_api: ServeApi) -> None:
    """A body still incomplete API_BODY_TIMEOUT_SECONDS after the headers: 408 body_timeout."""
    api = serve_api(api_body_timeout_seconds=0.3, secret_key=KEY)
    raw = (
        "POST /api/generations/create HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n"
        f"Secret-Key: {KEY}\r\nContent-Length: 100\r\n\r\n{{"
    ).encode()

    answer = await exchange(api.port, raw)

    assert (answer.status, answer.json()["code"]) == (408, "body_timeout")


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(serve_api: ServeApi) -> None:
    """After an answer, a connection that sends nothing more is closed after API_KEEPALIVE_TIMEOUT_SECONDS."""
    api = serve_api(api_keepalive_timeout_seconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(HEALTH)

    assert (await asyncio.wait_for(read_answer(reader), DEADLINE_SECONDS)).status == 200
    assert await closed_by_the_api(reader)
    writer.close()


async def test_past_the_cap_the_connection_idle_longest_makes_room(serve_api: ServeApi) -> None:
    """At API_MAX_CONNECTIONS a new connection is served; the one idle longest is closed for it."""
    api = serve_api(api_max_connections=3)
    idle = [await asyncio.open_connection("127.0.0.1", api.port) for _ in range(3)]
    for reader, writer in idle:  # each served once, then idle, kept alive
        writer.write(HEALTH)
        assert (await asyncio.wait_for(read_answer(reader), DEADLINE_SECONDS)).status == 200

    answer = await exchange(api.port, HEALTH)

    assert answer.status == 200
    oldest_reader, _ = idle[0]
    assert await closed_by_the_api(oldest_reader)
    newest_reader, newest_writer = idle[2]
    newest_writer.write(HEALTH)  # the others were left alone
    assert (await asyncio.wait_for(read_answer(newest_reader), DEADLINE_SECONDS)).status == 200
    for _, writer in idle:
        writer.close()


async def test_when_every_connection_is_inside_a_request_a_new_one_gets_503_at_once(
    serve_api: ServeApi, redis: redis_asyncio.Redis
) -> None:
    """With every slot serving a request (uploads waiting for a worker), 503 too_many_connections."""
    api = serve_api(api_max_connections=2, secret_key=KEY, upload_timeout_seconds=3)
    uploads = [asyncio.create_task(exchange(api.port, upload_request())) for _ in range(2)]

    async def both_waiting() -> bool:
        return len(await redis.keys(keys.upload_bytes("*"))) == 2

    await wait_until(both_waiting, "both uploads to wait for a worker")

    answer = await exchange(api.port, HEALTH)

    assert (answer.status, answer.json()["code"]) == (503, "too_many_connections")
    assert answer.headers["retry-after"] == "1"
    assert [(await upload).status for upload in uploads] == [504, 504]  # they were served to the end


async def test_a_connection_heard_from_is_shed_before_a_silent_new_one(serve_api: ServeApi) -> None:
    """A connection that has sent nothing yet may have its request on its way, so at the cap one
    that has already been served (or is trickling headers) is closed first, though it is newer."""
    api = serve_api(api_max_connections=2)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", api.port)
    served_reader, served_writer = await asyncio.open_connection("127.0.0.1", api.port)
    served_writer.write(HEALTH)
    assert (await asyncio.wait_for(read_answer(served_reader), DEADLINE_SECONDS)).status == 200

    newcomer = await exchange(api.port, HEALTH)
    silent_writer.write(HEALTH)

    assert newcomer.status == 200
    assert await closed_by_the_api(served_reader)
    assert (await asyncio.wait_for(read_answer(silent_reader), DEADLINE_SECONDS)).status == 200
    silent_writer.close()
    served_writer.close()


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("asyncio", "asyncio"), ("auto", "uvloop" if importlib.util.find_spec("uvloop") else "asyncio")],
)
def test_the_api_logs_which_event_loop_runs(serve_api: ServeApi, choice: str, expected: str) -> None:
    """API_EVENT_LOOP=auto takes uvloop when it is installed; the start-up line names the loop."""
    api = serve_api(api_event_loop=choice)

    [starting] = [line for line in api.log_lines() if line["event"] == "api starting"]
    assert starting["loop"] == expected


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def listening_pids(api: ApiProcess) -> set[int]:
    return {line["pid"] for line in api.log_lines() if line["event"] == "api listening"}


async def test_processes_serve_one_port_and_stop_together(serve_api: ServeApi) -> None:
    """--processes 2: two processes listen on the one port, answer, and exit 0 on one SIGTERM."""
    api = serve_api(args=("--processes", "2"))
    await wait_until(lambda: len(listening_pids(api)) == 2, "both processes to listen")
    serving = listening_pids(api)
    assert serving <= set(children_of(api.process.pid))  # with multiprocessing's resource tracker

    answers = await asyncio.gather(*(exchange(api.port, HEALTH) for _ in range(40)))

    assert {answer.status for answer in answers} == {200}
    assert api.stop() == 0
    assert not [pid for pid in serving if alive(pid)]


async def test_metrics_of_every_process_are_summed_on_the_one_port(serve_api: ServeApi) -> None:
    """--processes 2, multiprocess mode: /metrics counts the requests both processes answered."""
    api = serve_api(args=("--processes", "2"))
    await wait_until(lambda: len(listening_pids(api)) == 2, "both processes to listen")

    answers = await asyncio.gather(*(exchange(api.port, HEALTH) for _ in range(40)))
    assert {answer.status for answer in answers} == {200}
    # SO_REUSEPORT spreads the 40 connections over both processes: one process's own count would
    # be about half of them.

    metrics = await exchange(api.port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert metrics.status == 200
    served = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.body.decode())
        for sample in family.samples
    }
    healthz = frozenset({"route": "/healthz", "method": "GET", "status": "200"}.items())
    # The 40, plus the start-up probe that waited for the first process to answer.
    assert served[("luma_queue_http_requests_total", healthz)] >= 40
    assert served[("luma_queue_http_requests_total", healthz)] <= 42
    assert api.stop() == 0


async def test_one_process_dying_stops_the_others_and_fails(serve_api: ServeApi) -> None:
    """If one of the API_PROCESSES dies, the rest are stopped and the api exits 1, for a restart."""
    api = serve_api(api_processes=2)
    await wait_until(lambda: len(listening_pids(api)) == 2, "both processes to listen")
    first, second = listening_pids(api)

    os.kill(first, signal.SIGKILL)

    try:
        await wait_until(lambda: api.process.poll() is not None, "the api to exit")
    except AssertionError:
        raise AssertionError(f"the api did not exit; its log:\n{api.log()}") from None
    assert api.process.returncode == 1
    assert not alive(second)  # stopped, and reaped by the api before it exited
