"""What a benchmark run cost Redis: commands counted by Redis itself, and who sent them.

`RedisCounts.read(redis)` before and after a run gives, from INFO:
- `executed`: commands run, by name (`INFO commandstats`). A script counts as its EVALSHA plus
  every `redis.call` inside it (`total_commands_processed` counts the same way);
- `reads`: socket reads Redis served (`total_reads_processed`): about one per round trip, since a
  pipeline usually arrives in one read.
These are for all clients together. `attribute(...)` splits them by sender: it watches `MONITOR`
while a run goes on and maps each command's client port to the process owning that socket (from
/proc), so the api's commands can be told from the worker's, and a script's own calls from the
commands that crossed the network.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis

T = TypeVar("T")
INSIDE_SCRIPTS = "inside scripts"
UNKNOWN = "other"
END_MARKER = "bench-attribution-end"


@dataclass
class RedisCounts:
    reads: int = 0
    executed: Counter[str] = field(default_factory=Counter)
    info_calls: int = 0  # the INFO commands of these readings themselves

    @classmethod
    async def read(cls, redis: Redis) -> RedisCounts:
        stats = await redis.info("stats")
        commands = await redis.info("commandstats")
        executed = Counter(
            {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in commands.items()}
        )
        info_calls = executed.pop("info", 0)
        return cls(int(stats["total_reads_processed"]), executed, info_calls)

    @property
    def commands(self) -> int:
        return sum(self.executed.values())

    def __sub__(self, earlier: RedisCounts) -> RedisCounts:
        """What happened between two readings, without the readings' own INFO commands."""
        own = self.info_calls - earlier.info_calls
        executed = Counter(self.executed)
        executed.subtract(earlier.executed)
        return RedisCounts(reads=max(0, self.reads - earlier.reads - own), executed=+executed)

    def scaled(self, factor: float) -> RedisCounts:
        return RedisCounts(
            reads=round(self.reads * factor),
            executed=Counter({name: round(calls * factor) for name, calls in self.executed.items()}),
        )

    def net_of(self, background: RedisCounts) -> RedisCounts:
        """These counts less a background (e.g. the worker's polls measured while nothing else ran)."""
        executed = Counter(self.executed)
        executed.subtract(background.executed)
        return RedisCounts(reads=max(0, self.reads - background.reads), executed=+executed)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = fd.readlink().name
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_ports(pids: list[int]) -> set[int]:
    """Local ports of the TCP sockets these processes hold open."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids)) if pids else set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                columns = line.split()
                if len(columns) > 9 and columns[9] in inodes:
                    ports.add(int(columns[1].rsplit(":", 1)[1], 16))
    return ports


async def attribute(
    redis_url: str, processes: dict[str, list[int]], during: Awaitable[T]
) -> tuple[Counter[tuple[str, str]], T]:
    """Commands Redis received while `during` ran, by (sender, command name).

    The sender is the name in `processes` of the process that sent it; a script's own calls
    follow its EVAL/EVALSHA in MONITOR's output and are the sender's `"<name> inside scripts"`.
    MONITOR slows Redis: use it outside measured runs.
    """
    counts: Counter[tuple[str, str]] = Counter()
    by_port: dict[str, str] = {}
    monitor_client = Redis.from_url(redis_url, decode_responses=True)
    marker_client = Redis.from_url(redis_url, decode_responses=True)
    started = asyncio.Event()
    last_sender = UNKNOWN

    def refresh_ports() -> None:
        for name, pids in processes.items():
            for port in tcp_ports(pids):
                by_port[str(port)] = name

    async def watch() -> None:
        nonlocal last_sender
        async with monitor_client.monitor() as monitor:
            started.set()
            async for command in monitor.listen():
                if command["command"] == f"ECHO {END_MARKER}":
                    return  # everything sent before the end of `during` has been seen
                name = command["command"].split(" ", 1)[0].upper()
                if command["client_type"] == "lua":
                    counts[f"{last_sender} {INSIDE_SCRIPTS}", name] += 1
                    continue
                port = command["client_port"]
                if port not in by_port:
                    refresh_ports()
                last_sender = by_port.get(port, UNKNOWN)
                counts[last_sender, name] += 1

    refresh_ports()
    watcher = asyncio.ensure_future(watch())
    try:
        await started.wait()
        result = await during
        # MONITOR's stream lags behind under load: read on until this marker comes through.
        await marker_client.echo(END_MARKER)
        await asyncio.wait_for(watcher, timeout=120)
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher
        await monitor_client.aclose()
        await marker_client.aclose()
    return counts, result
