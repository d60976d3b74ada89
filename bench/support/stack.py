"""A private stack for one benchmark run, and the readings every benchmark takes from it.

    async with open_stack(tmp, config, limits, worker_settings, workers=2, keys=[...]) as stack:
        await stack.wait_ready(deadline)
        accepted = await submit_all(stack.api_url, [(key, prompt), ...], concurrency=50)
        records = await wait_terminal(stack.redis, accepted.ids, deadline)

The stack is a `redis-server` from PATH on a free port (AOF `appendfsync always`, as shipped;
nothing else saved), the simulator and the api in this process's event loop, and
`python -m cli.main worker` subprocesses.
With `api_processes=N` the api is instead a `python -m cli.main api` subprocess (N serving
processes where `luma-queue api --processes` exists), so its CPU can be read from /proc apart from
the simulator's. Everything it started is killed when the block ends, also on Ctrl-C, SIGTERM or
an error.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from api.app import create_app
from cli.ports import free_port
from cli.redis_server import RedisServer, RedisServerError
from shared import keys
from shared.logs import configure_logging
from shared.models import GenerationRecord
from shared.settings import Settings
from simulator.config import SimulatorConfig
from simulator.models import RequestRecord
from simulator.testing import RunningSimulator

_CHILDREN: list[subprocess.Popen[bytes]] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _kill_children() -> None:
    for child in _CHILDREN:
        if child.poll() is None:
            child.kill()
            with suppress(subprocess.TimeoutExpired):
                child.wait(5)


atexit.register(_kill_children)
# Python's own SIGINT handler even when started with SIGINT ignored (`cmd &` in a script), so that
# asyncio.run turns Ctrl-C into a cancellation of the main task and every `finally` below runs.
signal.signal(signal.SIGINT, signal.default_int_handler)


def run_benchmark(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """asyncio.run(main); on Ctrl-C or SIGTERM say that everything it started was stopped, exit 130."""
    try:
        return asyncio.run(main)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        raise SystemExit(130) from None


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "redis": next((part[2:] for part in redis_version if part.startswith("v=")), "unknown"),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces); fields[0] is the state."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc; 0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant: an api serving from N forked processes is all of them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and its live descendants (a child that already exited is not counted)."""
    return sum(cpu_seconds(member) for member in process_tree(pid))


def event_loop_of(pid: int) -> str:
    """`uvloop` if uvloop's extension is loaded in `pid` or a descendant, else `asyncio`.

    Read from /proc/PID/maps, so it holds whatever the process decided at start-up.
    """
    for member in process_tree(pid):
        try:
            maps = Path(f"/proc/{member}/maps").read_text()
        except OSError:
            continue
        if "/uvloop/" in maps:
            return "uvloop"
    return "asyncio"


def spawn(
    args: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C reaches only this script, which then takes the children down in order.
    with log.open("ab") as out:
        child = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _CHILDREN.append(child)
    return child


@dataclass
class Worker:
    env: dict[str, str]
    directory: Path
    index: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    cpu: float = 0.0  # CPU seconds of earlier incarnations

    def start(self) -> None:
        self.starts += 1
        log = self.directory / f"worker-{self.index}-{self.starts}.log"
        self.process = spawn([sys.executable, "-m", "cli.main", "worker"], log, self.directory, self.env)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            self.cpu += cpu_seconds(self.process.pid)
            self.process.kill()
            self.process.wait(10)

    def cpu_total(self) -> float:
        live = self.process is not None and self.process.poll() is None
        return self.cpu + (cpu_seconds(self.process.pid) if live and self.process else 0.0)


@dataclass
class Stack:
    directory: Path
    redis: Redis
    redis_server: RedisServer
    simulator: RunningSimulator
    api_url: str
    workers: list[Worker] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    api_process: subprocess.Popen[bytes] | None = None  # None: the api runs in this process
    redis_url: str = ""

    async def wait_ready(self, within: float = 60.0) -> None:
        """Every account's usage read (claims need it) and every worker's dispatcher idle in BLPOP."""
        deadline = time.monotonic() + within
        accounts = list(self.simulator.state.accounts)
        while time.monotonic() < deadline:
            usage = [
                await self.redis.hget(keys.account(name), "available")  # type: ignore[misc]
                for name in accounts
            ]
            clients = await self.redis.client_list()
            blocked = sum("b" in str(client.get("flags", "")) for client in clients)
            if all(value is not None for value in usage) and blocked >= len(self.workers):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"workers not ready within {within:.0f} s; logs in {self.directory}")

    def cpu(self) -> dict[str, float]:
        usage = {f"worker-{w.index}": round(w.cpu_total(), 1) for w in self.workers}
        usage["redis"] = round(cpu_seconds(self.redis_server.pid or 0), 1)
        own = os.times()
        if self.api_process is None:
            usage["bench (api+simulator)"] = round(own.user + own.system, 1)
        else:
            usage["api"] = round(tree_cpu_seconds(self.api_process.pid), 1)
            usage["bench (simulator)"] = round(own.user + own.system, 1)
        return usage


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the api's graceful stop) to the process and the ones it forked, then SIGKILL."""
    # spawn() gave it its own session, so its process group is its pid and holds only its own.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def settings_env(redis_url: str, settings: dict[str, object]) -> dict[str, str]:
    """This shell's environment minus any setting, so a child runs on defaults plus `settings`."""
    env = {name: value for name, value in os.environ.items() if name.lower() not in Settings.model_fields}
    env.update(REDIS_URL=redis_url, LOG_JSON="true")
    env.update({name: str(value) for name, value in settings.items()})
    return env


def worker_env(redis_url: str, luma_accounts: str, settings: dict[str, object]) -> dict[str, str]:
    return settings_env(redis_url, {"LUMA_ACCOUNTS": luma_accounts, **settings})


def api_has_processes_flag() -> bool:
    """Whether this checkout's `luma-queue api` takes `--processes N`."""
    shown = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--help"], capture_output=True, text=True, check=False
    )
    return "--processes" in shown.stdout


async def _start_api_process(
    directory: Path, redis_url: str, secret_keys: list[str], processes: int, settings: dict[str, object]
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m cli.main api` on a free port, answering /healthz; (process, base URL)."""
    command = [sys.executable, "-m", "cli.main", "api"]
    if api_has_processes_flag():
        command += ["--processes", str(processes)]
    elif processes != 1:
        raise SystemExit(f"luma-queue api has no --processes flag yet, so it cannot serve from {processes}")
    port = free_port()
    env = settings_env(
        redis_url,
        {"API_HOST": "127.0.0.1", "API_PORT": port, "SECRET_KEY": ",".join(secret_keys), **settings},
    )
    # cwd: the temp dir, so that no .env of the checkout leaks into the api's settings.
    process = spawn(command, directory / "api.log", directory, env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            with suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return process, url
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the api did not answer /healthz; see {directory / 'api.log'}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def open_stack(
    directory: Path,
    config: SimulatorConfig,
    limits: dict[str, int],
    worker_settings: dict[str, object],
    *,
    workers: int,
    secret_keys: list[str],
    api_processes: int | None = None,
    api_settings: dict[str, object] | None = None,
    redis_fsync: str = "always",
) -> AsyncIterator[Stack]:
    """The stack in `directory` (which must exist): logs, the AOF and worker output stay there.

    `redis_fsync`: Redis's `appendfsync`, the shipped `always` unless a run compares it.

    `api_processes`: None serves the api in this process (log level WARNING); a number starts it
    as a subprocess on its production defaults plus `api_settings` (environment variable names).
    """
    main = asyncio.current_task()
    if main is not None:  # SIGTERM stops the run the way Ctrl-C does: cancel, then clean up
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    configure_logging("WARNING", json_logs=False)  # the in-process api would log every request
    # A worker SIGKILLed mid-request is expected here; the simulator's server need not trace it.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        redis_server = RedisServer.started(directory, own_session=True, extra=["--appendfsync", redis_fsync])
    except RedisServerError as exc:
        raise SystemExit(str(exc)) from None
    atexit.register(redis_server.kill)
    redis_url = redis_server.url
    redis = Redis.from_url(redis_url, decode_responses=True)
    simulator = RunningSimulator(config)
    runner: web.AppRunner | None = None
    api_process: subprocess.Popen[bytes] | None = None
    stack: Stack | None = None
    try:
        await simulator.start()
        if api_processes is None:
            settings = Settings(
                _env_file=None,
                redis_url=redis_url,
                secret_key=secret_keys,
                log_level="WARNING",
            )
            runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            api_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        else:
            api_process, api_url = await _start_api_process(
                directory, redis_url, secret_keys, api_processes, api_settings or {}
            )
        pool = json.dumps(
            [
                {"name": name, "cookie": f"access_token={simulator.state.account(name).token}",
                 "base_url": simulator.url, "max_concurrency": limit}
                for name, limit in limits.items()
            ]
        )  # fmt: skip
        env = worker_env(redis_url, pool, worker_settings)
        stack = Stack(
            directory, redis, redis_server, simulator, api_url, api_process=api_process, redis_url=redis_url
        )
        stack.workers = [Worker(env, directory, index) for index in range(workers)]
        for worker in stack.workers:
            worker.start()
        yield stack
    finally:
        for worker in stack.workers if stack else []:
            worker.kill()
        if runner is not None:
            await runner.cleanup()
        if api_process is not None:
            _stop_group(api_process)
        await simulator.stop()
        with suppress(Exception):
            await redis.aclose()
        redis_server.stop()


@dataclass
class Accepted:
    ids: list[str]
    prompts: dict[str, str]  # gen id -> prompt
    rejected: Counter[int]
    first_accepted: float
    seconds: float


async def submit_all(api_url: str, jobs: list[tuple[str, str]], concurrency: int) -> Accepted:
    """POST every (key, prompt) to /api/generations/create over HTTP, `concurrency` at a time."""
    accepted: dict[int, tuple[str, str, float]] = {}
    rejected: Counter[int] = Counter()
    gate = asyncio.Semaphore(concurrency)
    started = time.time()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(index: int, key: str, prompt: str) -> None:
            async with (
                gate,
                http.post(
                    f"{api_url}/api/generations/create", json={"prompt": prompt}, headers={"Secret-Key": key}
                ) as response,
            ):
                if response.status != 200:
                    rejected[response.status] += 1
                    return
                body = await response.json()
                accepted[index] = (body["data"][0]["id"], prompt, time.time())

        await asyncio.gather(*(one(index, key, prompt) for index, (key, prompt) in enumerate(jobs)))
    ordered = [accepted[index] for index in sorted(accepted)]
    return Accepted(
        ids=[gen_id for gen_id, _, _ in ordered],
        prompts={gen_id: prompt for gen_id, prompt, _ in ordered},
        rejected=rejected,
        first_accepted=min((at for _, _, at in ordered), default=started),
        seconds=time.time() - started,
    )


async def read_records(redis: Redis, gen_ids: list[str]) -> dict[str, GenerationRecord]:
    found: dict[str, GenerationRecord] = {}
    for start in range(0, len(gen_ids), 500):
        chunk = gen_ids[start : start + 500]
        for raw in await redis.mget([keys.generation(gen_id) for gen_id in chunk]):
            if raw:
                record = GenerationRecord.model_validate_json(raw)
                found[record.id] = record
    return found


async def wait_terminal(
    redis: Redis,
    gen_ids: list[str],
    within: float,
    interval: float = 0.5,
    progress: Callable[[dict[str, GenerationRecord]], None] | None = None,
) -> tuple[dict[str, GenerationRecord], bool]:
    """Read the records until every one is terminal or `within` seconds pass; (records, all done)."""
    deadline = time.monotonic() + within
    while True:
        records = await read_records(redis, gen_ids)
        done = len(records) == len(gen_ids) and all(record.terminal for record in records.values())
        if progress is not None:
            progress(records)
        if done or time.monotonic() > deadline:
            return records, done
        await asyncio.sleep(interval)


def endpoint(request: RequestRecord) -> str | None:
    """Which Luma call a logged request was; None for the simulator's own paths."""
    path = request.path
    if not path.startswith("/api/"):
        return None
    if path == "/api/photon/v1/generations/" and request.method == "POST":
        return "create"
    if path.startswith("/api/photon/v1/user/generations"):
        return "list"
    if path.endswith("/subscription/usage"):
        return "usage"
    if path.startswith("/api/users/v1/me"):
        return "me"
    if path.endswith("/download_video_url"):
        # Asked once per completed generation for its watermark-free file (issue 12): a request
        # that buys a better video, not one that follows a generation's progress.
        return "download_url"
    if path.startswith("/api/photon/v1/generations/") and request.method == "GET":
        return "get"
    return "other"


def upstream_requests(simulator: RunningSimulator) -> Counter[str]:
    counts: Counter[str] = Counter()
    for request in simulator.state.requests():
        name = endpoint(request)
        if name is not None:
            counts[name] += 1
            if request.status >= 300:
                counts[f"{name} (non-2xx)"] += 1
    return counts


def log_events(directory: Path, levels: tuple[str, ...] = ("warning", "error", "critical")) -> Counter[str]:
    """How often each event was logged at `levels` by every worker incarnation (JSON lines)."""
    events: Counter[str] = Counter()
    for path in sorted(directory.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    events["(non-JSON output)"] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in levels:
                events[f"{entry['level']}: {entry.get('event')}"] += 1
    return events


def stats(values: list[float]) -> dict[str, float]:
    """Mean, median, p95 and max, rounded to milliseconds; empty -> {}."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": round(pick(0.5), 3),
        "p95": round(pick(0.95), 3),
        "max": round(ordered[-1], 3),
    }
