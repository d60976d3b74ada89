"""The load generator of bench/http_throughput.py: `wrk` where installed, else a Python fallback.

    result = await run_load(tool, url, method="POST", body='{"prompt": "..."}', headers={...},
                            connections=20, threads=1, seconds=6, directory=tmp)

Both run as their own process (so neither takes CPU from the bench's event loop) and report the
same numbers: requests, req/s, mean, p50, p99 and max latency, and errors by kind. `wrk` is
driven by a generated Lua script that sets the method and body and prints its summary as JSON.

The fallback (`python bench/support/loadgen.py ...`) is an aiohttp client with `connections`
coroutines in one process: its own CPU, not the server's, caps what it can measure, so its
req/s are lower than wrk's and compress every ratio towards 1. Its results say `python-fallback`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

WRK = "wrk"
PYTHON_FALLBACK = "python-fallback"
RESULT_PREFIX = "LOADGEN_JSON "

# wrk's done() hook: its own summary (microseconds, HdrHistogram percentiles) as one JSON line.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "seconds": %.6f, "mean_ms": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "status_errors": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d}\\n',
    "%(prefix)s", summary.requests, summary.duration / 1e6, latency.mean / 1000,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int  # answers outside 2xx/3xx
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def pick_tool(choice: str) -> str:
    """`auto`: wrk when it is on PATH, else the Python fallback."""
    if choice == "auto":
        return WRK if shutil.which("wrk") else PYTHON_FALLBACK
    if choice == WRK and shutil.which("wrk") is None:
        raise SystemExit("--loadgen wrk: wrk is not on PATH (Debian: apt-get install -y wrk)")
    return choice


def _lua_long_string(text: str) -> str:
    """`text` as a Lua long bracket string, which needs no escaping."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def wrk_script(method: str, body: str | None) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {_lua_long_string(body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    return "\n".join(lines) + WRK_DONE.replace("%(prefix)s", RESULT_PREFIX)


async def run_load(
    tool: str,
    url: str,
    *,
    method: str,
    body: str | None,
    headers: dict[str, str],
    connections: int,
    threads: int,
    seconds: float,
    directory: Path,
) -> LoadResult:
    """One closed-loop run against `url`, by `tool` in its own process."""
    if tool == WRK:
        digest = hashlib.sha256((body or "").encode()).hexdigest()[:12]
        script = directory / f"wrk-{method.lower()}-{digest}.lua"
        script.write_text(wrk_script(method, body))
        command = [
            # wrk takes whole seconds only
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script),
        ]  # fmt: skip
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        command.append(url)
    else:
        command = [
            sys.executable, str(Path(__file__)), "--url", url, "--method", method,
            "--connections", str(connections), "--seconds", str(seconds),
        ]  # fmt: skip
        if body is not None:
            command += ["--body", body]
        for name, value in headers.items():
            command += ["--header", f"{name}: {value}"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            return LoadResult(tool=tool, **json.loads(line[len(RESULT_PREFIX) :]))
    said = (out + err).decode(errors="replace")[-2000:]
    raise RuntimeError(f"{tool} printed no result (exit {process.returncode}): {said}")


async def _fallback(
    url: str, method: str, body: str | None, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, object]:
    import aiohttp

    latencies: list[float] = []
    errors = {"status_errors": 0, "connect_errors": 0, "read_errors": 0, "write_errors": 0, "timeouts": 0}
    send = dict(headers)
    if body is not None:
        send["Content-Type"] = "application/json"
    data = body.encode() if body is not None else None
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=send) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_connection() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with http.request(method, url, data=data) as response:
                        await response.read()
                        if response.status >= 400:
                            errors["status_errors"] += 1
                except TimeoutError:
                    errors["timeouts"] += 1
                    continue
                except aiohttp.ClientConnectionError:
                    errors["connect_errors"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read_errors"] += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "requests": len(latencies),  # answered, whatever the status (as wrk counts them)
        "seconds": round(elapsed, 6),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1], 3),
        **errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="The Python fallback load generator (see module doc).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body")
    parser.add_argument("--header", action="append", default=[], help='"Name: value"')
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    headers = dict(header.split(": ", 1) for header in args.header)
    result = asyncio.run(_fallback(args.url, args.method, args.body, headers, args.connections, args.seconds))
    print(RESULT_PREFIX + json.dumps(result))


if __name__ == "__main__":
    main()
