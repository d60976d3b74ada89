"""How fast is the api's hot path next to aiohttp itself, on the same machine in the same run?

    python bench/http_throughput.py [--rounds 3] [-t 1] [-c 20] [-d 6] [--api-processes 1]
                                    [--loadgen auto|wrk|python-fallback] [--profile DIR]

Starts a private redis-server, the simulator, the product's api as a real subprocess
(`python -m cli.main api`, on its production defaults: so its CPU can be read from /proc) and
one worker, and a bare aiohttp app (bench/support/bare_app.py) answering the same paths with
bodies of the same shape. Then, for create, detail and list, it drives each with the same load
generator (`wrk`, or the clearly labelled Python fallback), bare and product in turn (ABAB...) for
`--rounds` rounds, so the machine's noise falls on both. It prints, per endpoint, the medians of
req/s, p50 and p99 for both, the product/bare ratio (median of the per-round ratios), Redis
commands per request (INFO commandstats before and after each run) and CPU seconds per 1,000
requests of the api and of the bare app; then which event loop each ran, and one JSON line.

What is measured:
- create: POST /api/generations/create, one key holder, the same small body every time.
- detail: GET /api/generations/{id} of a completed generation.
- list: GET /api/generations?offset=0&limit=10 of a second key holder with 10 completed ones.
The read holder's 10 generations are created through the api and run to completion by the worker
on the simulator first. Then the simulator keeps new generations `pending` upstream, so during
the runs the pool is full (as under a flood of creates) and the worker only polls: the Redis
commands counted are the api's, plus the worker's background, which is measured and printed.
The api runs with MAX_QUEUE_DEPTH raised so that the creates of every round are accepted.

`--profile DIR`: after the measured rounds, one more product run per endpoint under
`py-spy record` (installed in the venv), raw collapsed stacks in DIR/<endpoint>.txt and a summary
of where the api's time went. Those runs are not in the table (sampling slows the api down).

A benchmark, not a test: nothing asserts a timing. The machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from support import pyspy
from support.loadgen import PYTHON_FALLBACK, WRK, LoadResult, pick_tool, run_load
from support.redis_counts import RedisCounts, attribute
from support.stack import (
    Stack,
    api_has_processes_flag,
    event_loop_of,
    machine,
    open_stack,
    process_tree,
    spawn,
    submit_all,
    tree_cpu_seconds,
    wait_terminal,
)

from cli.ports import free_port
from simulator.config import AccountSpec, SimulatorConfig

CREATE_KEY = "bench-create-key"
READ_KEY = "bench-read-key"
ACCOUNT = AccountSpec(name="bench-1", token="bench-token-1", capacity=1_000_000)
SLOTS = 2
READ_RECORDS = 10
CREATE_BODY = json.dumps({"prompt": "a benchmark prompt: a kitten chasing a ball of yarn"})
ENDPOINTS = ("create", "detail", "list")
# Long enough that a generation claimed during the runs never ends while the benchmark runs.
PENDING_DURING_RUNS_SECONDS = 86_400.0
# Production defaults: its polls and ticks are the background every api request shares Redis with.
WORKER_SETTINGS: dict[str, object] = {"LOG_LEVEL": "WARNING"}
BACKGROUND_SECONDS = 3.0
# Long enough for thousands of requests; MONITOR slows Redis, so these runs are not in the table.
ATTRIBUTION_SECONDS = 3.0


@dataclass
class Target:
    """One server under load: the product's api or the bare app, and how to read its CPU."""

    name: str
    url: str
    pid: int


@dataclass
class Run:
    endpoint: str
    target: str
    load: LoadResult
    cpu_seconds: float
    redis: RedisCounts  # everything Redis did meanwhile, the worker's background included
    net: RedisCounts | None = None  # product runs: less the background of the paired bare run

    @property
    def cpu_per_1k(self) -> float:
        return 1000 * self.cpu_seconds / self.load.requests if self.load.requests else 0.0

    def per_request(self, value: float) -> float:
        return value / self.load.requests if self.load.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "endpoint": self.endpoint,
            "target": self.target,
            **self.load.as_dict(),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_seconds_per_1k": round(self.cpu_per_1k, 3),
            "redis_commands": self.redis.commands,
            "redis_reads": self.redis.reads,
            "redis_executed": dict(self.redis.executed.most_common()),
        }
        if self.net is not None:
            shown.update(
                net_redis_commands_per_request=round(self.per_request(self.net.commands), 2),
                net_redis_reads_per_request=round(self.per_request(self.net.reads), 2),
                net_redis_commands_by_name={
                    name: round(self.per_request(calls), 2) for name, calls in self.net.executed.most_common()
                },
            )
        return shown


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="bare/product pairs per endpoint")
    parser.add_argument("-t", "--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("-c", "--connections", type=int, default=20)
    parser.add_argument("-d", "--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load per target")
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="passed as `luma-queue api --processes N` (needs the flag)",
    )
    parser.add_argument("--loadgen", choices=["auto", WRK, PYTHON_FALLBACK], default="auto")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument(
        "--redis-reference",
        action="store_true",
        help="also run a bare app that makes the product's Redis round trips (a second yardstick)",
    )
    parser.add_argument("--api-log-level", default="INFO", help="the api's LOG_LEVEL (production default)")
    parser.add_argument("--bare-loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--profile", type=Path, help="also profile the api with py-spy; files go here")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="length of each profiled run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) and say where")
    args = parser.parse_args()
    if args.rounds < 1 or args.connections < 1 or args.duration <= 0 or args.api_processes < 1:
        parser.error("--rounds, -c and --api-processes must be >= 1 and -d > 0")
    if args.api_processes != 1 and not api_has_processes_flag():
        parser.error("this checkout's `luma-queue api` has no --processes flag yet")
    return args


def requests_for(endpoint: str, base: str, detail_id: str) -> tuple[str, str, str | None, dict[str, str]]:
    """(url, method, body, headers) of one endpoint's load."""
    if endpoint == "create":
        return f"{base}/api/generations/create", "POST", CREATE_BODY, {"Secret-Key": CREATE_KEY}
    if endpoint == "detail":
        return f"{base}/api/generations/{detail_id}", "GET", None, {"Secret-Key": READ_KEY}
    return f"{base}/api/generations?offset=0&limit={READ_RECORDS}", "GET", None, {"Secret-Key": READ_KEY}


async def measure(
    args: argparse.Namespace, tool: str, stack: Stack, target: Target, endpoint: str, detail_id: str,
    directory: Path, seconds: float,
) -> Run:  # fmt: skip
    url, method, body, headers = requests_for(endpoint, target.url, detail_id)
    redis_before = await RedisCounts.read(stack.redis)
    cpu_before = tree_cpu_seconds(target.pid)
    load = await run_load(
        tool, url, method=method, body=body, headers=headers, connections=args.connections,
        threads=args.threads, seconds=seconds, directory=directory,
    )  # fmt: skip
    cpu = tree_cpu_seconds(target.pid) - cpu_before
    redis = await RedisCounts.read(stack.redis) - redis_before
    return Run(endpoint, target.name, load, cpu, redis)


async def seed_reads(stack: Stack) -> str:
    """The read holder's 10 generations, created through the api and completed; the newest's id."""
    accepted = await submit_all(
        stack.api_url, [(READ_KEY, f"a stored generation, number {n}") for n in range(READ_RECORDS)], 10
    )
    if len(accepted.ids) != READ_RECORDS:
        raise RuntimeError(f"the api refused seed creates: {dict(accepted.rejected)}")
    records, done = await wait_terminal(stack.redis, accepted.ids, within=60, interval=0.2)
    if not done or any(record.state != "completed" for record in records.values()):
        raise RuntimeError("the read holder's generations did not all complete within 60 s")
    return accepted.ids[-1]


async def product_responses(api_url: str, detail_id: str) -> dict[str, Any]:
    """The api's own answers, for the bare app to send bodies of the same shape."""
    answers: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for endpoint in ENDPOINTS:
            url, method, body, headers = requests_for(endpoint, api_url, detail_id)
            if body is not None:
                headers = {**headers, "Content-Type": "application/json"}
            async with http.request(method, url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(
                        f"{endpoint}: the api answered {response.status}: {await response.text()}"
                    )
                answers[endpoint] = await response.json()
    listed = answers["list"]["data"]
    if len(listed) != READ_RECORDS or any(item["state"] != "completed" for item in listed):
        raise RuntimeError(f"the list should show {READ_RECORDS} completed generations: {listed}")
    if answers["detail"]["data"]["state"] != "completed":
        raise RuntimeError("the detail should be a completed generation")
    return answers


async def start_bare(
    directory: Path, responses: dict[str, Any], loop: str, redis_url: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    path = directory / "responses.json"
    path.write_text(json.dumps(responses))
    port = free_port()
    script = Path(__file__).parent / "support" / "bare_app.py"
    command = [sys.executable, str(script), "--port", str(port), "--responses", str(path), "--loop", loop]
    if redis_url:
        command += ["--redis", redis_url]
    name = "bare-redis" if redis_url else "bare"
    process = spawn(command, directory / f"{name}.log", directory)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/api/generations") as response:
                    if response.status == 200:
                        return process, url
            except aiohttp.ClientError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bare app did not start; see {directory / 'bare.log'}")
            await asyncio.sleep(0.05)


async def background_rate(redis: Redis) -> float:
    """Redis commands per second with no load: the worker's polls, heartbeats and sweeps."""
    before = await RedisCounts.read(redis)
    started = time.monotonic()
    await asyncio.sleep(BACKGROUND_SECONDS)
    idle = await RedisCounts.read(redis) - before
    return idle.commands / (time.monotonic() - started)


async def attribute_commands(
    args: argparse.Namespace, tool: str, stack: Stack, api: Target, detail_id: str, directory: Path
) -> dict[str, dict[str, Any]]:
    """Per endpoint, Redis commands per request by sender (api, worker), from a MONITOR'd run."""
    processes = {"api": process_tree(api.pid)}
    for worker in stack.workers:
        if worker.process is not None:
            processes["worker"] = processes.get("worker", []) + process_tree(worker.process.pid)
    found: dict[str, dict[str, Any]] = {}
    for endpoint in args.endpoints:
        counts, run = await attribute(
            stack.redis_url,
            processes,
            measure(args, tool, stack, api, endpoint, detail_id, directory, ATTRIBUTION_SECONDS),
        )
        requests = max(1, run.load.requests)
        senders: Counter[str] = Counter()
        commands: dict[str, Counter[str]] = {}
        for (sender, name), calls in counts.items():
            senders[sender] += calls
            commands.setdefault(sender, Counter())[name] += calls
        found[endpoint] = {
            "requests": run.load.requests,
            "per_request": {sender: round(calls / requests, 2) for sender, calls in sorted(senders.items())},
            "commands_per_request": {
                sender: {name: round(calls / requests, 2) for name, calls in by_name.most_common()}
                for sender, by_name in sorted(commands.items())
            },
        }
    return found


async def profile_api(
    args: argparse.Namespace, tool: str, stack: Stack, api: Target, detail_id: str, directory: Path
) -> dict[str, Any]:
    """One run per endpoint with py-spy sampling the api; where its time went."""
    args.profile.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise SystemExit(f"--profile needs py-spy in the venv: {sys.executable} -m pip install py-spy")
    summaries: dict[str, Any] = {}
    for endpoint in args.endpoints:
        output = args.profile / f"{endpoint}.txt"
        # Sampling starts just after the load does and stops before it ends: only loaded time.
        sampled = max(1.0, args.profile_seconds - 1.0)
        load = asyncio.ensure_future(
            measure(args, tool, stack, api, endpoint, detail_id, directory, args.profile_seconds)
        )
        recorder = await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--pid", str(api.pid), "--rate", str(args.profile_rate),
            "--duration", f"{sampled:g}", "--format", "raw", "--nolineno", "--idle",
            "--subprocesses", "--output", str(output),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await recorder.communicate()
        run = await load
        if recorder.returncode != 0 or not output.exists():
            raise RuntimeError(f"py-spy failed: {err.decode()[-1000:]}")
        summary = pyspy.summarize(output)
        summary["rps_while_sampled"] = round(run.load.rps, 1)
        summaries[endpoint] = summary
        print(pyspy.render(endpoint, summary, output))
    return summaries


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def net(run: Run) -> RedisCounts:
    return run.net if run.net is not None else run.redis


def summarize(runs: list[Run], endpoints: list[str]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for endpoint in endpoints:
        bare = [run for run in runs if run.endpoint == endpoint and run.target == "bare"]
        product = [run for run in runs if run.endpoint == endpoint and run.target == "product"]
        reference = [run for run in runs if run.endpoint == endpoint and run.target == "bare-redis"]
        # Paired by round: each ratio compares runs a few seconds apart, under the same noise.
        ratios = [p.load.rps / b.load.rps for b, p in zip(bare, product, strict=True) if b.load.rps]
        to_reference = [
            p.load.rps / r.load.rps for r, p in zip(reference, product, strict=False) if r.load.rps
        ]
        table[endpoint] = {
            "bare_redis_rps": round(median([run.load.rps for run in reference]), 1),
            "ratio_to_bare_redis": round(median(to_reference), 3),
            "bare_rps": round(median([run.load.rps for run in bare]), 1),
            "bare_p50_ms": round(median([run.load.p50_ms for run in bare]), 2),
            "bare_p99_ms": round(median([run.load.p99_ms for run in bare]), 2),
            "product_rps": round(median([run.load.rps for run in product]), 1),
            "product_p50_ms": round(median([run.load.p50_ms for run in product]), 2),
            "product_p99_ms": round(median([run.load.p99_ms for run in product]), 2),
            "ratio": round(median(ratios), 3),
            "ratio_min": round(min(ratios, default=0.0), 3),
            "ratio_max": round(max(ratios, default=0.0), 3),
            "redis_commands_per_request": round(
                median([run.per_request(net(run).commands) for run in product]), 2
            ),
            "redis_reads_per_request": round(median([run.per_request(net(run).reads) for run in product]), 2),
            "api_cpu_seconds_per_1k": round(median([run.cpu_per_1k for run in product]), 3),
            "bare_cpu_seconds_per_1k": round(median([run.cpu_per_1k for run in bare]), 3),
            "product_errors": sum(run.load.errors for run in product),
            "bare_errors": sum(run.load.errors for run in bare),
        }
    return table


def render(table: dict[str, dict[str, float]]) -> str:
    header = (
        f"{'endpoint':<8} {'bare req/s':>10} {'p50':>7} {'p99':>7} | {'api req/s':>9} {'p50':>7} {'p99':>7}"
        f" | {'ratio':>5} {'(range)':>11} | {'redis cmd':>9} {'reads':>5} | {'CPU s/1k api':>12} {'bare':>6}"
    )
    lines = [header, "-" * len(header)]
    for endpoint, row in table.items():
        spread = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
        lines.append(
            f"{endpoint:<8} {row['bare_rps']:>10,.0f} {row['bare_p50_ms']:>7.2f} {row['bare_p99_ms']:>7.2f} |"
            f" {row['product_rps']:>9,.0f} {row['product_p50_ms']:>7.2f} {row['product_p99_ms']:>7.2f} |"
            f" {row['ratio']:>5.2f} {spread:>11} |"
            f" {row['redis_commands_per_request']:>9.2f} {row['redis_reads_per_request']:>5.2f} |"
            f" {row['api_cpu_seconds_per_1k']:>12.3f} {row['bare_cpu_seconds_per_1k']:>6.3f}"
        )
    if any(row["bare_redis_rps"] for row in table.values()):
        lines.append("")
        lines.append("bare + the product's Redis round trips (bare_app.py --redis), next to the api:")
        for endpoint, row in table.items():
            lines.append(
                f"{endpoint:<8} bare+redis {row['bare_redis_rps']:>8,.0f} req/s"
                f" | api {row['product_rps']:>8,.0f} req/s | ratio {row['ratio_to_bare_redis']:.2f}"
            )
    lines.append(
        "latencies in ms; req/s, latencies, CPU and Redis counts are medians over the rounds; ratio ="
        " median of per-round api/bare req/s. Redis per request, all clients (api and worker), less"
        " the background counted during the paired bare run: `cmd` = INFO commandstats calls (a"
        " script's own calls included), `reads` = socket reads Redis served (~ round trips)."
    )
    return "\n".join(lines)


async def bench(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    tool = pick_tool(args.loadgen)
    config = SimulatorConfig(pending_seconds=0, processing_seconds=0.2, accounts=[ACCOUNT])
    api_settings: dict[str, object] = {
        "LOG_LEVEL": args.api_log_level,
        # Every round's creates stay queued (the pool is full): the default bound would refuse
        # them after ~10,000 and the benchmark would measure 429s.
        "MAX_QUEUE_DEPTH": 1_000_000_000,
        "SHUTDOWN_GRACE_SECONDS": 1,
    }
    async with open_stack(
        directory, config, {ACCOUNT.name: SLOTS}, WORKER_SETTINGS, workers=1,
        secret_keys=[CREATE_KEY, READ_KEY], api_processes=args.api_processes, api_settings=api_settings,
    ) as stack:  # fmt: skip
        assert stack.api_process is not None
        await stack.wait_ready()
        detail_id = await seed_reads(stack)
        stack.simulator.config.pending_seconds = PENDING_DURING_RUNS_SECONDS
        responses = await product_responses(stack.api_url, detail_id)
        bare_process, bare_url = await start_bare(directory, responses, args.bare_loop)
        api = Target("product", stack.api_url, stack.api_process.pid)
        bare = Target("bare", bare_url, bare_process.pid)
        # The second yardstick goes first in each round, so that the run right before the api's
        # is still the bare one, whose Redis background the api's count is netted against.
        references: list[Target] = []
        if args.redis_reference:
            ref_process, ref_url = await start_bare(directory, responses, args.bare_loop, stack.redis_url)
            references = [Target("bare-redis", ref_url, ref_process.pid)]
        loops = {"api": event_loop_of(api.pid), "bare": event_loop_of(bare.pid)}
        print(
            f"load: {tool} -t{args.threads} -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds"
            f" (bare, api in turn); api processes {args.api_processes}; event loop api {loops['api']},"
            f" bare {loops['bare']}",
            flush=True,
        )
        for endpoint in args.endpoints:  # unrecorded: connections, caches, Redis's script cache
            for target in (*references, bare, api):
                await measure(args, tool, stack, target, endpoint, detail_id, directory, args.warmup)
        background = await background_rate(stack.redis)
        runs: list[Run] = []
        for round_no in range(1, args.rounds + 1):
            for endpoint in args.endpoints:
                for target in (*references, bare, api):
                    run = await measure(
                        args, tool, stack, target, endpoint, detail_id, directory, args.duration
                    )
                    if target is api:  # the bare run just before saw the same background, and no api
                        before = runs[-1]
                        run.net = run.redis.net_of(
                            before.redis.scaled(run.load.seconds / before.load.seconds)
                        )
                    runs.append(run)
                    print(
                        f"  round {round_no} {endpoint:<6} {target.name:<7} {run.load.rps:>8,.0f} req/s"
                        f"  p50 {run.load.p50_ms:6.2f} ms  p99 {run.load.p99_ms:6.2f} ms"
                        f"  CPU {run.cpu_per_1k:.3f} s/1k"
                        + (
                            f"  redis {run.per_request(run.net.commands):.2f} cmd/req"
                            f" {run.per_request(run.net.reads):.2f} reads/req"
                            if run.net is not None
                            else ""
                        )
                        + (f"  ERRORS {run.load.errors}" if run.load.errors else ""),
                        flush=True,
                    )
        table = summarize(runs, args.endpoints)
        senders = await attribute_commands(args, tool, stack, api, detail_id, directory)
        profile = await profile_api(args, tool, stack, api, detail_id, directory) if args.profile else None
        cpu = stack.cpu()
        cpu["bare"] = round(tree_cpu_seconds(bare.pid), 1)
        return {
            "loadgen": tool,
            "loops": loops,
            "background_redis_commands_per_second": round(background, 1),
            "table": table,
            "redis_commands_by_sender": senders,
            "runs": [run.as_dict() for run in runs],
            "profile": profile,
            "cpu_seconds_total": cpu,
        }


def main() -> None:
    args = parse_args()
    m = machine()
    directory = Path(tempfile.mkdtemp(prefix="http-throughput-"))
    try:
        result = asyncio.run(bench(args, directory))
    finally:
        if args.keep:
            print(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print()
    print(
        f"http_throughput on {m['nproc']} x {m['cpu_model']}, Python {m['python']}, redis {m['redis']},"
        f" {m['date']}"
    )
    if result["loadgen"] == PYTHON_FALLBACK:
        print(
            "LOAD GENERATOR: python-fallback, not wrk. Its own CPU caps req/s, so the figures are far"
            " below wrk's and every ratio is pushed towards 1: compare only within this run."
        )
    print(
        f"load generator {result['loadgen']}; event loop: api {result['loops']['api']},"
        f" bare {result['loops']['bare']}; api processes {args.api_processes}; api LOG_LEVEL"
        f" {args.api_log_level}"
    )
    print(render(result["table"]))
    print(
        f"(the background netted out: {result['background_redis_commands_per_second']} Redis commands/s"
        " with no load, the worker's polls and ticks)"
    )
    print(
        "Redis commands per request by sender, from a MONITOR'd run of each (not in the table above):"
        " `api`/`worker` = commands sent over the network, `... inside scripts` = their scripts' own calls;"
        " requests still in flight when the load stopped add up to connections/requests to each"
    )
    for endpoint, found in result["redis_commands_by_sender"].items():
        print(f"  {endpoint} ({found['requests']} requests):")
        for sender, per_request in found["per_request"].items():
            if per_request >= 0.01:
                names = found["commands_per_request"][sender].items()
                detail = ", ".join(f"{name} {value:g}" for name, value in names if value >= 0.01)
                print(f"    {sender:<24} {per_request:6.2f}" + (f"  ({detail})" if detail else ""))
    errors = {name: row["product_errors"] for name, row in result["table"].items() if row["product_errors"]}
    if errors:
        print(f"WARNING: the api answered errors (non-2xx, timeouts) in: {errors}")
    summary = {
        "benchmark": "http_throughput",
        "machine": m,
        "settings": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_seconds": args.duration,
            "rounds": args.rounds,
            "api_processes": args.api_processes,
            "api_log_level": args.api_log_level,
        },
        **result,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
