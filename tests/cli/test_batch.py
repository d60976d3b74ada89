"""`luma-queue batch`, `status` and `download`, run as the real command against a real stack:
Redis, the api as its own process, a worker process and the simulator (its request log shows
every upstream create and upload, so "never twice" is checked where the money is)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from simulator.media import VIDEO_BYTES
from simulator.testing import RunningSimulator
from tests.e2e.helpers import creates_per_prompt
from tests.fixtures.api_process import ServeApi
from tests.fixtures.simulator import simulator_with
from tests.fixtures.stack import ROOT, Workers, accounts_for
from tests.images import PNG

KEY = "key-of-the-batch-user"
RUN_DEADLINE_SECONDS = 120.0


@dataclass
class Gateway:
    url: str
    simulator: RunningSimulator


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def gateway_for(
    serve_api: ServeApi,
    start_worker: Workers,
    simulator: RunningSimulator,
    pool: dict[str, int] | None = None,
    **api: object,
) -> Gateway:
    """The api (as its own process) and a worker on the test's Redis, the simulator behind them."""
    settings: dict[str, object] = {
        "secret_key": KEY,
        "default_generation_seconds": 0.3,
        "upload_timeout_seconds": 10,
        "events_heartbeat_seconds": 1,
        **api,
    }
    process = serve_api(**settings)
    pool = pool or {"sim-1": 4, "sim-2": 4}
    start_worker(accounts_for(simulator, pool), **{name.upper(): value for name, value in api.items()})
    return Gateway(process.url, simulator)


@pytest.fixture
def gateway(serve_api: ServeApi, start_worker: Workers, simulator: RunningSimulator) -> Gateway:
    return gateway_for(serve_api, start_worker, simulator)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LUMA_", "SECRET"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def start(args: list[str], cwd: Path, stdin: bytes | None = None) -> asyncio.subprocess.Process:
    """The command as its own process, its output piped (so not a terminal: plain lines)."""
    return await asyncio.create_subprocess_exec(
        *command(*args),
        cwd=cwd,
        env=environment(),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def run(args: list[str], cwd: Path, stdin: bytes | None = None) -> Result:
    """Run it to the end without blocking the loop the simulator runs in."""
    process = await start(args, cwd, stdin)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), RUN_DEADLINE_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return Result(process.returncode or 0, out.decode(), err.decode())


def batch_args(gateway: Gateway, prompts: Path | str, out: Path, *more: str) -> list[str]:
    return ["batch", str(prompts), "--url", gateway.url, "--key", KEY, "--out", str(out), *more]


def read_manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def assert_plain_and_secret_free(result: Result) -> None:
    assert "\x1b[" not in result.stdout + result.stderr, "escape codes off a terminal"
    assert KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@simulator_with(pending_seconds=0.05, processing_seconds=0.1)
async def test_fifty_prompts_end_as_fifty_videos_and_a_rerun_makes_nothing_again(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A 50-line .txt: 50 files with the simulator's bytes, a complete manifest, plain output; the
    same command again creates nothing upstream; status counts the batch; download fetches it."""
    prompts = tmp_path / "prompts.txt"
    lines = ["# fifty foxes\n", "\n"] + [f"a red fox number {n} in the snow\n" for n in range(1, 51)]
    prompts.write_text("".join(lines))
    out = tmp_path / "videos"

    first = await run(batch_args(gateway, prompts, out), tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert_plain_and_secret_free(first)
    entries = read_manifest(out)
    assert [entry["line"] for entry in entries] == list(range(3, 53))
    for entry in entries:
        assert entry["state"] == "completed" and entry["id"] and entry["video_url"]
        assert entry["failure_reason"] is None
        assert entry["file"] == f"{entry['line']:03d}-a-red-fox-number-{entry['line'] - 2}-in-the-snow.mp4"
        assert (out / entry["file"]).read_bytes() == VIDEO_BYTES
    names = sorted(entry["file"] for entry in entries)
    assert sorted(path.name for path in out.iterdir()) == [*names, "manifest.jsonl"]
    assert "line 3: completed" in first.stdout and "50 downloaded" in first.stdout
    plain = re.compile(r"line \d+: (\w+|downloaded \S+\.mp4) \[\d+/50 done\]|submitted .+|50 lines: .+")
    assert all(plain.fullmatch(line) for line in first.stdout.splitlines()), first.stdout
    assert all(count == 1 for count in creates_per_prompt(gateway.simulator).values())
    assert sum(creates_per_prompt(gateway.simulator).values()) == 50

    again = await run(batch_args(gateway, prompts, out), tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "50 downloaded" in again.stdout
    assert sum(creates_per_prompt(gateway.simulator).values()) == 50

    [batch_id] = {entry["batch_id"] for entry in entries}
    status = await run(["status", batch_id, "--url", gateway.url, "--key", KEY], tmp_path)
    assert status.returncode == 0, status.stderr
    assert (
        f"batch {batch_id}: 50 generations: 0 waiting, 0 processing, 50 completed, 0 failed" in status.stdout
    )

    elsewhere = tmp_path / "elsewhere"
    fetched = await run(
        ["download", batch_id, "--url", gateway.url, "--key", KEY, "--out", str(elsewhere)], tmp_path
    )
    assert fetched.returncode == 0, fetched.stderr
    files = sorted(elsewhere.glob("*.mp4"))
    assert len(files) == 50 and files[0].name == "001-a-red-fox-number-1-in-the-snow.mp4"
    assert all(path.read_bytes() == VIDEO_BYTES for path in files)


@simulator_with(pending_seconds=0.05, processing_seconds=0.1)
async def test_a_local_image_named_by_several_jsonl_lines_is_uploaded_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Three .jsonl lines, two naming cat.png: one upload, both creates start from its URL."""
    (tmp_path / "cat.png").write_bytes(PNG)
    prompts = tmp_path / "prompts.jsonl"
    items = [
        {"prompt": "the cat wakes up", "image": "cat.png", "name": "Cat, awake!"},
        {"prompt": "the cat jumps", "image": "cat.png", "aspect_ratio": "9:16", "loop": True},
        {"prompt": "a dog without a picture", "expand_prompt": False},
    ]
    prompts.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "out"

    result = await run(batch_args(gateway, prompts, out), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(gateway.simulator.state.requests(path_contains="file_upload")) == 1
    reports = {report["prompt"]: report for report in gateway.simulator.state.generation_reports()}
    image_url = reports["the cat wakes up"]["image_url"]
    assert image_url and reports["the cat jumps"]["image_url"] == image_url
    assert reports["a dog without a picture"]["image_url"] is None
    assert [entry["file"] for entry in read_manifest(out)] == [
        "001-cat-awake.mp4",
        "002-the-cat-jumps.mp4",
        "003-a-dog-without-a-picture.mp4",
    ]


@simulator_with(pending_seconds=0.05, processing_seconds=0.4)
async def test_a_run_stopped_by_sigint_and_started_again_makes_no_line_twice(
    serve_api: ServeApi, start_worker: Workers, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Ctrl-C halfway, while videos come in and lines are still to submit (the holder may have 8
    waiting, 2 run at once, chunks are 5: the gateway answers 429 meanwhile), exits 130 and says
    how to resume; the same command then finishes the rest with one upstream create a line."""
    gateway = gateway_for(serve_api, start_worker, simulator, {"sim-1": 2}, holder_max_queued=8)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"an owl at dusk, take {n}\n" for n in range(1, 25)))
    out = tmp_path / "videos"
    args = batch_args(gateway, prompts, out, "--chunk-size", "5")

    process = await start(args, tmp_path)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.mp4"))) < 3:
        assert process.returncode is None and time.monotonic() < deadline, "no videos came"
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out_text, err_text = await asyncio.wait_for(process.communicate(), 30)
    stopped = Result(process.returncode or 0, out_text.decode(), err_text.decode())

    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "run the same command" in stopped.stderr and "luma-queue batch" in stopped.stderr
    assert_plain_and_secret_free(stopped)
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))
    at_stop = read_manifest(out)
    assert any(entry["id"] is None for entry in at_stop), "stopped before submitting every line"
    assert "the gateway is busy" in stopped.stdout

    resumed = await run(args, tmp_path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    per_prompt = creates_per_prompt(simulator)
    assert per_prompt == {f"an owl at dusk, take {n}": 1 for n in range(1, 25)}
    entries = read_manifest(out)
    assert len(entries) == 24 and all(entry["file"] for entry in entries)
    assert all((out / entry["file"]).read_bytes() == VIDEO_BYTES for entry in entries)


@simulator_with(pending_seconds=0.05, processing_seconds=0.1, failure_rate=0.5, seed=0)
async def test_lines_the_upstream_fails_are_listed_with_their_reason_and_exit_1(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Prompts on stdin: --no-wait submits and prints the batch id; the same command then follows
    it to the two lines the simulator failed (seed 0: two of four) listed with their reason,
    exit 1, and the rest downloaded; a re-run makes nothing again, --retry-failed makes those two."""
    prompts = b"one\ntwo\nthree\nfour\n"
    out = tmp_path / "videos"

    submitted = await run(batch_args(gateway, "-", out, "--no-wait"), tmp_path, stdin=prompts)
    assert submitted.returncode == 0, submitted.stderr
    [batch_id] = {entry["batch_id"] for entry in read_manifest(out)}
    assert batch_id in submitted.stdout

    result = await run(batch_args(gateway, "-", out), tmp_path, stdin=prompts)

    assert result.returncode == 1, result.stdout + result.stderr
    entries = read_manifest(out)
    failed = [entry for entry in entries if entry["state"] == "failed"]
    completed = [entry for entry in entries if entry["state"] == "completed"]
    assert len(failed) == 2 and len(completed) == 2
    for entry in failed:
        assert entry["failure_reason"] == "upstream_failed" and entry["file"] is None
        assert f"line {entry['line']} failed: upstream_failed" in result.stdout
    assert all((out / entry["file"]).read_bytes() == VIDEO_BYTES for entry in completed)
    assert sum(creates_per_prompt(gateway.simulator).values()) == 4

    again = await run(batch_args(gateway, "-", out), tmp_path, stdin=prompts)
    assert again.returncode == 1 and sum(creates_per_prompt(gateway.simulator).values()) == 4

    gateway.simulator.state.config.failure_rate = 0
    retried = await run(batch_args(gateway, "-", out, "--retry-failed"), tmp_path, stdin=prompts)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    per_prompt = creates_per_prompt(gateway.simulator)
    assert sorted(per_prompt.values()) == [1, 1, 2, 2]
    assert {prompt for prompt, made in per_prompt.items() if made == 2} == {
        entry["prompt"] for entry in failed
    }
    assert all(entry["state"] == "completed" and entry["file"] for entry in read_manifest(out))


@simulator_with(pending_seconds=0.05, processing_seconds=0.1)
async def test_a_rerun_after_an_edit_makes_only_the_new_and_changed_lines(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A .csv run, then a row inserted on top and one edited: two creates more; the moved rows
    keep their generations and their videos take their new numbers."""
    prompts = tmp_path / "shots.csv"
    prompts.write_text(
        "prompt,name,aspect_ratio,loop\na lighthouse,Light,16:9,yes\na harbour,,9:16,\na gull,,,no\n"
    )
    out = tmp_path / "out"
    first = await run(batch_args(gateway, prompts, out, "--quiet"), tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("\n") == 1, "--quiet prints the summary alone"
    before = {entry["prompt"]: entry for entry in read_manifest(out)}
    assert [entry["file"] for entry in before.values()] == [
        "002-light.mp4",
        "003-a-harbour.mp4",
        "004-a-gull.mp4",
    ]
    made = {
        made.prompt: (made.aspect_ratio, made.loop) for made in gateway.simulator.state.generations.values()
    }
    assert made == {"a lighthouse": ("16:9", True), "a harbour": ("9:16", False), "a gull": ("16:9", False)}

    prompts.write_text(
        "prompt,name,aspect_ratio,loop\nfirst of all,,,\na lighthouse,Light,16:9,yes\n"
        "a harbour at dawn,,9:16,\na gull,,,no\n"
    )
    second = await run(batch_args(gateway, prompts, out), tmp_path)

    assert second.returncode == 0, second.stdout + second.stderr
    assert "submitted 2 lines (2, 4)" in second.stdout
    assert creates_per_prompt(gateway.simulator) == {
        "a lighthouse": 1, "a harbour": 1, "a gull": 1, "first of all": 1, "a harbour at dawn": 1
    }  # fmt: skip
    after = {entry["prompt"]: entry for entry in read_manifest(out)}
    assert list(after) == ["first of all", "a lighthouse", "a harbour at dawn", "a gull"]
    assert after["a lighthouse"]["id"] == before["a lighthouse"]["id"]
    assert after["a gull"]["id"] == before["a gull"]["id"]
    assert [entry["file"] for entry in after.values()] == [
        "002-first-of-all.mp4", "003-light.mp4", "004-a-harbour-at-dawn.mp4", "005-a-gull.mp4"
    ]  # fmt: skip
    assert all((out / entry["file"]).read_bytes() == VIDEO_BYTES for entry in after.values())


async def test_a_wrong_key_is_one_line_and_exit_2(gateway: Gateway, tmp_path: Path) -> None:
    """A refused key is a usage error: one line on stderr naming the fix, no traceback, nothing made."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")
    result = await run(
        ["batch", str(prompts), "--url", gateway.url, "--key", "not-the-key", "--out", str(tmp_path / "o")],
        tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--key" in result.stderr and "not-the-key" not in result.stderr
    assert gateway.simulator.state.generation_reports() == []


def luma_queue(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=cwd, env=environment(), input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def nothing_listening(tmp_path: Path) -> Iterator[str]:
    from cli.ports import free_port

    yield f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("prompts.pdf", "x", "must be a .txt, .jsonl or .csv"),
        ("empty.txt", "# only a comment\n\n", "no prompts"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "no end"\n', "line 2: not JSON"),
        ("typo.jsonl", '{"promt": "a"}\n', "line 1: unknown field 'promt'"),
        ("ratio.csv", "prompt,aspect_ratio\nfine,16:9\nwide,wide\n", "line 3: aspect_ratio"),
        ("noprompt.csv", "name,image\na,b\n", "'prompt' column"),
        ("image.jsonl", '{"prompt": "p", "image": "missing.png"}\n', "line 1: image 'missing.png'"),
    ],
)
def test_a_bad_prompt_file_is_one_line_and_exit_2(
    tmp_path: Path, nothing_listening: str, name: str, content: str, says: str
) -> None:
    """A file that cannot be used is refused whole, before any request, naming the line."""
    (tmp_path / name).write_text(content)
    result = luma_queue("batch", name, "--url", nothing_listening, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_gateway_is_one_line_and_exit_2(tmp_path: Path, nothing_listening: str) -> None:
    """Prompts on stdin, nobody at --url: one line naming the address, exit 2, no traceback."""
    result = luma_queue(
        "batch", "-", "--url", nothing_listening, "--key", KEY, cwd=tmp_path, stdin="a prompt\n"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot reach the gateway at {nothing_listening}" in result.stderr
    assert result.stderr.count("\n") == 1 and KEY not in result.stderr


class NoStreamProxy:
    """The gateway as seen through a proxy that has no event stream (404), recording each request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.path == "/api/generations/events":
            raise web.HTTPNotFound()
        headers = {name: value for name, value in request.headers.items() if name.lower() in FORWARDED}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read(), headers=_kept(answer.headers))


FORWARDED = frozenset({"secret-key", "idempotency-key", "content-type"})


def _kept(headers: Any) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() in ("content-type", "retry-after")}


@simulator_with(pending_seconds=0.05, processing_seconds=0.3)
async def test_without_an_event_stream_it_follows_by_listing_ids_never_one_request_per_generation(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Behind a gateway with no event stream, 30 lines are followed by listings of ids (at most
    100 a request, one request a tick), never by asking for each generation."""
    proxy = NoStreamProxy(gateway.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("".join(f"a kite, take {n}\n" for n in range(1, 31)))
        out = tmp_path / "videos"
        args = ["batch", str(prompts), "--url", str(server.make_url("")).rstrip("/"), "--key", KEY]
        result = await run([*args, "--out", str(out)], tmp_path)
    finally:
        await server.close()

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(out.glob("*.mp4"))) == 30
    gets = [(path, query) for method, path, query in proxy.requests if method == "GET"]
    assert ("/api/generations/events", {}) in gets
    listings = [query for path, query in gets if path == "/api/generations"]
    assert listings and all(0 < len(query["ids"].split(",")) <= 100 for query in listings)
    assert not [path for path, _ in gets if path.startswith("/api/generations/") and path.count("/") == 3
                and path != "/api/generations/events"]  # fmt: skip
    # One listing a tick (every 2 s) while anything is unsettled: far fewer than one per generation.
    assert len(listings) < 30
