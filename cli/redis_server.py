"""The one way we start a `redis-server` of our own: `luma-queue dev`, the tests and bench/ all use it.

    server = RedisServer.started(directory)      # a free port, AOF on, answers PING
    server.url                                   # redis://127.0.0.1:PORT/0
    server.kill(); server.start()                # a crash and a restart with what the AOF kept
    server.freeze(); server.thaw()               # SIGSTOP / SIGCONT: a Redis that stops answering
    SentinelServer(directory, primary.port, ...) # a `redis-server --sentinel` watching a primary

`command()` is the argv alone, for a caller that runs its children its own way (`luma-queue dev`
pipes every child's output to the terminal).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import redis

from cli.ports import free_port

INSTALL_HINT = "Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
PING_EVERY_SECONDS = 0.02
SENTINEL_CONFIG = "sentinel.conf"


ServerT = TypeVar("ServerT", bound="RedisServer")


class RedisServerError(RuntimeError):
    """redis-server is not installed, exited at start, or did not answer in time; the message says which."""


def executable() -> str:
    """The path of `redis-server` on PATH."""
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerError(f"redis-server is not installed ({INSTALL_HINT})")
    return found


def command(port: int, directory: Path, *, persistent: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The argv of a redis-server on 127.0.0.1:`port` keeping its files in `directory`.

    `persistent` is the production setting (README): an append-only file synced before each
    answer (`appendfsync always`), so an acknowledged write, a create's intent above all, survives
    a crash (docs/RELIABILITY.md says why not `everysec`). Always: no RDB snapshots, and
    noeviction, so a full Redis refuses writes instead of dropping queued work. The log goes to
    stdout.
    """
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    return [
        executable(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--save", "",
        *durability,
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--logfile", "",
        *extra,
    ]  # fmt: skip


def start_on_a_free_port(make: Callable[[], ServerT], attempts: int = 3) -> ServerT:
    """`make()` a server (on a free port of its choosing) and start it, again if the port was taken."""
    for attempt in range(attempts):
        server = make()
        try:
            server.start()
            return server
        except RedisServerError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class RedisServer:
    """One `redis-server` process on 127.0.0.1, its output in `directory/redis.log`.

    Port and directory are fixed for the object's life, so `kill()` then `start()` brings back the
    same server with whatever its append-only file had: the way a real Redis restarts.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        persistent: bool = True,
        extra: Sequence[str] = (),
        own_session: bool = False,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.persistent = persistent
        self.extra = tuple(extra)
        # In its own session a Ctrl-C in the terminal reaches only the parent, which stops it in order.
        self.own_session = own_session
        self.log_path = directory / "redis.log"
        self.frozen = False
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def started(
        cls,
        directory: Path,
        *,
        persistent: bool = True,
        extra: Sequence[str] = (),
        own_session: bool = False,
    ) -> RedisServer:
        """A running server on a free port; another port is tried if one was taken in the meantime."""
        return start_on_a_free_port(
            lambda: cls(directory, persistent=persistent, extra=extra, own_session=own_session)
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def argv(self) -> list[str]:
        return command(self.port, self.directory, persistent=self.persistent, extra=self.extra)

    def start(self) -> None:
        """Start the server (same port, same dir) and return once it answers PING."""
        if self.running:
            raise RedisServerError(f"redis-server on port {self.port} is already running")
        argv = self.argv()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.own_session,
            )
        self.frozen = False
        self._wait_for_ping()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like. Acknowledged writes survive in the AOF."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits cleanly."""
        self._end(signal.SIGTERM)

    def freeze(self) -> None:
        """SIGSTOP: the process stays, its connections stay open, and nothing is answered."""
        if not self.running or self._process is None:
            raise RedisServerError(f"redis-server on port {self.port} is not running")
        self._process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: a frozen server carries on where it stopped."""
        if self._process is not None and self.frozen:
            self._process.send_signal(signal.SIGCONT)
        self.frozen = False

    def client(self) -> redis.Redis:
        """A synchronous client, for setup and checks outside the event loop."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        if self.frozen:
            process.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
            self.frozen = False
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait_for_ping(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            while True:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    self._process = None
                    raise RedisServerError(
                        f"redis-server on port {self.port} exited with code {code}:\n" + self.log_tail()
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisServerError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{START_TIMEOUT_SECONDS:.0f}s:\n" + self.log_tail()
                    )
                time.sleep(PING_EVERY_SECONDS)
        finally:
            client.close()


class SentinelServer(RedisServer):
    """One `redis-server --sentinel` on 127.0.0.1 watching the primary `primary_port` as `master`.

    `down_after_ms` and `failover_timeout_ms` are Sentinel's own knobs: how long the primary may
    be silent before it counts as down, and how long one failover attempt may take. The config file
    is written once, on the first start; Sentinel rewrites it with what it learns.
    """

    def __init__(
        self,
        directory: Path,
        primary_port: int,
        *,
        master: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 30_000,
        failover_timeout_ms: int = 180_000,
        port: int | None = None,
    ) -> None:
        super().__init__(directory, port)
        self.primary_port = primary_port
        self.master = master
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def argv(self) -> list[str]:
        config = self.directory / SENTINEL_CONFIG
        if not config.exists():
            config.write_text(
                "\n".join(
                    [
                        f"port {self.port}",
                        "bind 127.0.0.1",
                        f"dir {self.directory}",
                        'logfile ""',
                        "daemonize no",
                        f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} {self.quorum}",
                        f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
                        f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {self.master} 1",
                        "",
                    ]
                )
            )
        return [executable(), str(config), "--sentinel"]
