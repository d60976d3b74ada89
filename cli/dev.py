"""`luma-queue dev`: the whole stack on one machine, started by one command and stopped by Ctrl-C.

Children, in start order: a private redis-server (unless REDIS_URL is set), the simulator (unless
accounts are configured), the api and one worker. Each runs in its own session so that Ctrl-C in the
terminal reaches only this process, which then stops them in reverse order: the worker first, while
Redis is still there to take its last writes, Redis last.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, cast

from cli import redis_server
from cli.ports import port_taken
from shared.redisconn import redacted_url

if TYPE_CHECKING:
    from shared.settings import Settings

# The admin API is on under `make dev` (the README's admin examples use it) with this key,
# unless ADMIN_KEY says otherwise. It guards nothing but this machine's dev stack.
DEV_ADMIN_KEY = "dev-admin-key"
# redis-server's start-up lines that say nothing a developer can act on, each start: its banner
# and the overcommit warning (a sysctl of the host, harmless for a dev stack). They stay in the log.
REDIS_NOISE = re.compile(
    r"oO0OoO0OoO0Oo|Redis version=|Configuration loaded|Server initialized|Memory overcommit"
)
# Where the dev stack's worker serves its metrics unless WORKER_METRICS_PORT says otherwise.
DEV_WORKER_METRICS_PORT = 9100

REDIS_READY_SECONDS = 15.0
SIMULATOR_READY_SECONDS = 30.0
API_READY_SECONDS = 60.0
CHECK_EVERY_SECONDS = 0.1

COLOURS = {"redis": "31", "simulator": "35", "api": "36", "worker": "32"}


class DevError(Exception):
    """Something the user must act on; the message says what."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    hide: re.Pattern[str] | None = None  # lines kept in the log but not shown
    pump: threading.Thread = field(init=False)


class Stack:
    """The child processes, their output, and the order in which they stop."""

    def __init__(self, log_dir: Path, stop_timeout: float) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.stop_signal: str | None = None
        self.force = False
        self._output_lock = threading.Lock()
        self.colour = sys.stdout.isatty()
        self._width = max(len(name) for name in COLOURS)

    # -- output -------------------------------------------------------------------------------

    def say(self, message: str, *, error: bool = False) -> None:
        with self._output_lock:
            print(f"luma-queue dev: {message}", file=sys.stderr if error else sys.stdout, flush=True)

    def show(self, text: str) -> None:
        with self._output_lock:
            print(text, flush=True)

    def _emit(self, name: str, line: str) -> None:
        prefix = f"{name:<{self._width}} |"
        if self.colour:
            prefix = f"\033[{COLOURS.get(name, '0')}m{prefix}\033[0m"
        with self._output_lock:
            sys.stdout.write(f"{prefix} {line}\n")
            sys.stdout.flush()

    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        with child.log_path.open("wb") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip("\r\n")
                if child.hide is None or not child.hide.search(line):
                    self._emit(child.name, line)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, hide: re.Pattern[str] | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        child = Child(name, process, self.log_dir / f"{name}.log", hide)
        assert process.stdout is not None
        child.pump = threading.Thread(target=self._pump, args=(child, process.stdout), daemon=True)
        child.pump.start()
        self.children.append(child)
        self.say(f"started {name} (pid {process.pid})")
        return child

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: printing here could re-enter a write the main thread was in the middle of.
        if self.stop_requested.is_set():
            self.force = True
        else:
            self.stop_signal = signal.Signals(signum).name
            self.stop_requested.set()

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        return next((child for child in self.children if child.process.poll() is not None), None)

    def wait_until(self, what: str, check: Callable[[], str | None], timeout: float) -> None:
        """Return once `check` reports ready (None); fail if a child dies or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stop_requested.is_set():
                raise Interrupted
            self.raise_if_a_child_exited()
            problem = check()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise DevError(f"{what} was not ready after {timeout:.0f}s: {problem}")
            self.stop_requested.wait(CHECK_EVERY_SECONDS)

    def watch(self) -> None:
        """Block until a stop is requested; raise if a child exits on its own before that."""
        while not self.stop_requested.wait(0.2):
            self.raise_if_a_child_exited()

    def raise_if_a_child_exited(self) -> None:
        child = self.exited()
        if child is None:
            return
        child.pump.join(timeout=2)  # let its last lines reach the terminal before our message
        code = child.process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise DevError(
            f"{child.name} {how} unexpectedly; stopping the rest. "
            f"Its output is above and in {_relative(child.log_path)}"
        )

    def stop(self) -> None:
        """SIGTERM each child, newest first; SIGKILL one that outlives stop_timeout."""
        running = [child for child in reversed(self.children) if child.process.poll() is None]
        if running:
            reason = f"{self.stop_signal} received: " if self.stop_signal else ""
            self.say(reason + "stopping " + ", ".join(child.name for child in running))
        for child in running:
            self._end(child)
        for child in self.children:
            child.pump.join(timeout=2)

    def _end(self, child: Child) -> None:
        _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while child.process.poll() is None:
            if self.force or time.monotonic() > deadline:
                why = "second signal" if self.force else f"not stopped after {self.stop_timeout:.0f}s"
                self.say(f"{why}: killing {child.name}")
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
                return
            with suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=CHECK_EVERY_SECONDS)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each child leads its own process group (start_new_session): signal anything it spawned too.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, children get SIGTERM if this process dies without cleaning up (e.g. SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    # Loaded here, in the parent: the child between fork and exec only makes the one call.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


@contextmanager
def _signals_handled_by(stack: Stack) -> Iterator[None]:
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stack.request_stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- readiness checks: None when ready, else why not ------------------------------------------


def _redis_answers(url: str) -> Callable[[], str | None]:
    import redis

    def check() -> str | None:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
            return None
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    return check


def _http_answers(url: str) -> Callable[[], str | None]:
    # No proxy: an http_proxy in the environment must not answer for a local server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def check() -> str | None:
        try:
            with opener.open(url, timeout=2):
                return None
        except urllib.error.HTTPError:
            return None  # any HTTP answer, even 404, means the server is up
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    return check


def _require_free_port(host: str, port: int, what: str, hint: str) -> None:
    if port_taken(host, port):
        raise DevError(
            f"port {port} on {host} is already taken, so {what} cannot start "
            f"(is another `luma-queue dev` still running?). {hint}"
        )


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _reachable_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *arguments]


# -- the stack --------------------------------------------------------------------------------


@dataclass
class Running:
    """What the banner reports."""

    api_url: str
    redis_url: str
    redis_dir: Path | None
    upstream: str
    admin_key: str
    accounts: list[tuple[str, str]]  # (name, base_url) of every account in the registry
    worker_metrics_url: str | None = None


def _start_redis(stack: Stack, port: int, run_dir: Path) -> tuple[str, Path]:
    _require_free_port(
        "127.0.0.1",
        port,
        "the private redis-server",
        "Stop it, pass --redis-port, or set REDIS_URL to use a Redis you run yourself.",
    )
    data_dir = run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        argv = redis_server.command(port, data_dir, extra=["--loglevel", "warning"])
    except redis_server.RedisServerError as exc:
        raise DevError(f"{exc}. Install it, or set REDIS_URL to a Redis you already run.") from None
    stack.start("redis", argv, dict(os.environ), hide=REDIS_NOISE)
    return f"redis://127.0.0.1:{port}/0", data_dir


def _simulator_accounts(base_url: str) -> list[dict[str, str]]:
    """LUMA_ACCOUNTS entries for the simulator's own dev accounts (sim-1, sim-2)."""
    from simulator.config import default_accounts

    return [
        {"name": spec.name, "cookie": f"access_token={spec.token}", "base_url": base_url}
        for spec in default_accounts()
    ]


def start_stack(stack: Stack, settings: Settings, args: argparse.Namespace, run_dir: Path) -> Running:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if stack.colour and "log_json" not in settings.model_fields_set:
        env["LOG_JSON"] = "false"  # pretty logs on a terminal, even though children write to a pipe
    admin_key = settings.admin_key or DEV_ADMIN_KEY
    env["ADMIN_KEY"] = admin_key
    if "webhook_allow_private_networks" not in settings.model_fields_set:
        # Webhooks to a receiver on this machine (README, "Webhooks"); never on outside development.
        env["WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = "true"

    # Check every port before starting anything, so a clash is reported before any output.
    api_host = settings.api_host
    _require_free_port(
        api_host, settings.api_port, "the api", "Stop what holds it, or set API_PORT to another port."
    )
    # The worker's own metrics (README, "Operating it"): on by default here, off elsewhere.
    worker_metrics_port = settings.worker_metrics_port
    if worker_metrics_port is None and "worker_metrics_port" not in settings.model_fields_set:
        worker_metrics_port = DEV_WORKER_METRICS_PORT
        _require_free_port(
            "127.0.0.1",
            worker_metrics_port,
            "the worker's metrics",
            "Stop what holds it, or set WORKER_METRICS_PORT to another port.",
        )
        env["WORKER_METRICS_PORT"] = str(worker_metrics_port)
    accounts = settings.accounts()
    if not accounts:
        _require_free_port(
            "127.0.0.1", args.simulator_port, "the simulator", "Stop it, or pass --simulator-port."
        )

    if "redis_url" in settings.model_fields_set:
        redis_url, redis_dir = settings.redis_url, None
    else:
        redis_url, redis_dir = _start_redis(stack, args.redis_port, run_dir)
        env["REDIS_URL"] = redis_url
    stack.wait_until(f"Redis at {redacted_url(redis_url)}", _redis_answers(redis_url), REDIS_READY_SECONDS)

    if accounts:
        upstream = "Luma accounts " + ", ".join(f"{a.name} ({a.base_url})" for a in accounts)
    else:
        simulator_url = f"http://127.0.0.1:{args.simulator_port}"
        simulator_accounts = _simulator_accounts(simulator_url)
        env["LUMA_ACCOUNTS"] = json.dumps(simulator_accounts)
        stack.start(
            "simulator",
            _cli(
                "simulator",
                "--host", "127.0.0.1",
                "--port", str(args.simulator_port),
                "--pending-seconds", str(args.sim_pending_seconds),
                "--processing-seconds", str(args.sim_processing_seconds),
                # Its media outlive a restart, as Redis's records of them do.
                "--media-dir", str(run_dir / "simulator"),
            ),
            env,
        )  # fmt: skip
        stack.wait_until(
            f"the simulator at {simulator_url}", _http_answers(simulator_url), SIMULATOR_READY_SECONDS
        )
        upstream = f"the simulator at {simulator_url}"

    api_url = f"http://{_reachable_host(api_host)}:{settings.api_port}"
    stack.start("api", _cli("api"), env)
    stack.start("worker", _cli("worker"), env)
    stack.wait_until(f"the api at {api_url}", _http_answers(api_url + "/healthz"), API_READY_SECONDS)
    # The worker writes the configured accounts into the registry as it starts; the banner lists
    # the registry's, so an account added through the admin API shows as well.
    registry: list[tuple[str, str]] = []

    def accounts_registered() -> str | None:
        registry[:] = _registered_accounts(redis_url)
        return None if registry else "the worker has not registered its accounts yet"

    stack.wait_until("the worker", accounts_registered, API_READY_SECONDS)
    worker_metrics_url = (
        f"http://{_reachable_host(settings.worker_metrics_host)}:{worker_metrics_port}/metrics"
        if worker_metrics_port is not None
        else None
    )
    return Running(
        api_url=api_url,
        redis_url=redis_url,
        redis_dir=redis_dir,
        upstream=upstream,
        admin_key=admin_key,
        accounts=registry,
        worker_metrics_url=worker_metrics_url,
    )


def _registered_accounts(url: str) -> list[tuple[str, str]]:
    """(name, base_url) of each account in the registry, by name."""
    import redis

    from shared import keys

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, decode_responses=True)
    try:
        names = sorted(cast("set[str]", client.smembers(keys.ACCOUNTS)))
        return [(name, str(client.hget(keys.account(name), "base_url") or "")) for name in names]
    except redis.RedisError:
        return []
    finally:
        client.close()


def banner(running: Running, settings: Settings, log_dir: Path) -> str:
    key = settings.secret_key[0] if settings.secret_key else None
    if key is None:
        key_line = "none: SECRET_KEY is empty, so the api runs open (anyone who can reach it may use it)"
        header = ""
    else:
        more = f" (and {len(settings.secret_key) - 1} more)" if len(settings.secret_key) > 1 else ""
        key_line = key + more
        header = f" -H 'Secret-Key: {key}'"
    redis_note = f"private, data in {_relative(running.redis_dir)}" if running.redis_dir else "from REDIS_URL"
    admin_note = "from ADMIN_KEY" if settings.admin_key else "the dev default; set ADMIN_KEY to change it"
    url = running.api_url
    admin = f" -H 'Secret-Key: {running.admin_key}'"
    batch_key = f" --key {key}" if key else ""
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            f"luma-queue is running at {url}   (Ctrl-C stops everything)",
            "",
            f"  dashboard   {url}/   (open it in a browser)",
            f"  api         {url}   (docs: {url}/docs, OpenAPI: {url}/openapi.json)",
            f"  metrics     {url}/metrics"
            + (f"   worker: {running.worker_metrics_url}" if running.worker_metrics_url else ""),
            f"  Secret-Key  {key_line}",
            f"  admin key   {running.admin_key}   ({admin_note})",
            f"  redis       {redacted_url(running.redis_url)}  ({redis_note})",
            f"  upstream    {running.upstream}",
            *_account_lines(running.accounts, running.upstream),
            f"  logs        {_relative(log_dir)}/",
            "",
            "Try it (README.md has more):",
            f"  curl -sS -X POST {url}/api/generations/create{header} -H 'Content-Type: application/json' \\",
            '       -d \'{"prompt": "a red fox running through snow"}\'',
            f"  curl -sS {url}/api/generations/GENERATION_ID{header}",
            f"  curl -sS '{url}/api/generations?offset=0&limit=10'{header}",
            f"  curl -sS {url}/api/generations/usage{header}",
            f"  curl -sS -X POST {url}/api/generations/upload{header} -F file=@examples/fox.png",
            f"  curl -sS {url}/api/admin/accounts{admin}",
            "",
            "A file of prompts in, a folder of videos out (examples/shots.jsonl: with an image):",
            f"  luma-queue batch examples/prompts.txt --url {url}{batch_key} --out videos/",
            rule,
        ]
    )


def _account_lines(accounts: list[tuple[str, str]], upstream: str) -> list[str]:
    """One line per account in the registry, saying which are real Luma accounts."""
    lines = []
    for index, (name, base_url) in enumerate(accounts):
        simulated = base_url.startswith(("http://127.0.0.1", "http://localhost"))
        what = "simulator" if simulated else "a real Luma account: generations are paid"
        lines.append(f"  {'accounts' if index == 0 else '':<10}  {name} ({base_url}; {what})")
    if accounts and all(line.endswith("simulator)") for line in lines):
        lines[-1] += "   no Luma account used"
    return lines


def run(args: argparse.Namespace, settings: Settings) -> int:
    run_dir = Path.cwd() / ".run"
    log_dir = run_dir / "logs"
    stack = Stack(log_dir, args.stop_timeout)
    with _signals_handled_by(stack):
        try:
            running = start_stack(stack, settings, args, run_dir)
            stack.show(banner(running, settings, log_dir))
            stack.watch()
            return 0
        except Interrupted:
            return 0
        except DevError as exc:
            stack.say(str(exc), error=True)
            return 1
        finally:
            if stack.children:
                stack.stop()
                stack.say("stopped")
