"""A thousand open live streams on one api process: what they cost idle, and how fast events reach them.

    python bench/sse_streams.py [--streams 1000] [--holders 10] [--creates 20] [--idle 10]

Starts a private stack with the api as a real subprocess (so its CPU and memory can be read from
/proc) and no worker, opens --streams `GET /api/generations/events` connections spread evenly over
--holders key holders, and then:
- idle: for --idle seconds nothing happens; the api's CPU seconds and resident memory are read;
- load: each holder creates --creates generations (one at a time per holder, all holders at
  once); every stream of that holder must receive each one's `created` event. The time from the
  create's answer to each stream's receipt is the delivery latency.
Prints the idle CPU, memory per stream, events delivered and missed, and latency p50/p99/max,
then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from support.stack import machine, open_stack, tree_cpu_seconds

from simulator.config import SimulatorConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--holders", type=int, default=10)
    parser.add_argument("--creates", type=int, default=20, help="generations per holder")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    return parser.parse_args()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def read_stream(
    response: aiohttp.ClientResponse, holder: int, received: dict[str, list[float]], ready: asyncio.Event
) -> None:
    """Record the arrival time of each generation id this stream is told about."""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line == ": connected":
            ready.set()
        elif line.startswith("data: "):
            received[json.loads(line[6:])["id"]].append(time.perf_counter())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    keys_ = [f"bench-sse-key-{n}" for n in range(args.holders)]
    with tempfile.TemporaryDirectory(prefix="sse-") as tmp:
        stack_cm = open_stack(
            Path(tmp), SimulatorConfig(), {}, {}, workers=0, secret_keys=keys_, api_processes=1
        )
        async with stack_cm as stack:
            assert stack.api_process is not None
            pid = stack.api_process.pid
            base_rss = rss_mb(pid)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                received: list[dict[str, list[float]]] = [defaultdict(list) for _ in range(args.streams)]
                readers = []
                for n in range(args.streams):
                    ready = asyncio.Event()
                    response = await http.get(
                        f"{stack.api_url}/api/generations/events",
                        headers={"Secret-Key": keys_[n % args.holders]},
                    )
                    assert response.status == 200, response.status
                    readers.append(
                        asyncio.create_task(read_stream(response, n % args.holders, received[n], ready))
                    )
                    await ready.wait()
                await asyncio.sleep(1.0)
                open_rss = rss_mb(pid)
                cpu_before = tree_cpu_seconds(pid)
                await asyncio.sleep(args.idle)
                idle_cpu = tree_cpu_seconds(pid) - cpu_before

                answered: dict[str, tuple[int, float]] = {}

                async def holder_creates(holder: int) -> None:
                    for index in range(args.creates):
                        async with http.post(
                            f"{stack.api_url}/api/generations/create",
                            json={"prompt": f"holder {holder} prompt {index}"},
                            headers={"Secret-Key": keys_[holder]},
                        ) as answer:
                            body = await answer.json()
                            answered[body["data"][0]["id"]] = (holder, time.perf_counter())

                cpu_before = tree_cpu_seconds(pid)
                started = time.perf_counter()
                await asyncio.gather(*(holder_creates(holder) for holder in range(args.holders)))
                deadline = time.perf_counter() + 30
                expected = args.streams * args.creates
                while time.perf_counter() < deadline:
                    got = sum(len(times) for stream in received for times in stream.values())
                    if got >= expected:
                        break
                    await asyncio.sleep(0.1)
                load_seconds = time.perf_counter() - started
                load_cpu = tree_cpu_seconds(pid) - cpu_before
                for reader in readers:
                    reader.cancel()
            latencies, missed = [], 0
            for n, stream in enumerate(received):
                for gen_id, (holder, at) in answered.items():
                    if holder != n % args.holders:
                        continue
                    if gen_id in stream:
                        latencies.extend((arrival - at) * 1000 for arrival in stream[gen_id][:1])
                    else:
                        missed += 1
            ordered = sorted(latencies)
            return {
                "streams": args.streams,
                "holders": args.holders,
                "idle_seconds": args.idle,
                "idle_api_cpu_seconds": round(idle_cpu, 3),
                "api_rss_mb": {"before": round(base_rss, 1), "with_streams": round(open_rss, 1)},
                "rss_kb_per_stream": round((open_rss - base_rss) * 1024 / args.streams, 1),
                "creates": len(answered),
                "events_delivered": len(latencies),
                "events_missed": missed,
                "load_seconds": round(load_seconds, 2),
                "load_api_cpu_seconds": round(load_cpu, 2),
                "latency_ms": {
                    "p50": round(statistics.median(ordered), 1) if ordered else None,
                    "p99": round(ordered[int(len(ordered) * 0.99)], 1) if ordered else None,
                    "max": round(ordered[-1], 1) if ordered else None,
                },
            }


def main() -> None:
    args = parse_args()
    result = asyncio.run(run(args))
    print(
        f"{result['streams']} streams over {result['holders']} holders on one api process: "
        f"idle {result['idle_api_cpu_seconds']} CPU-s in {result['idle_seconds']:.0f} s, "
        f"{result['rss_kb_per_stream']} KB per stream ({result['api_rss_mb']})"
    )
    latency = result["latency_ms"]
    print(
        f"{result['creates']} creates -> {result['events_delivered']} events delivered, "
        f"{result['events_missed']} missed; latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"max {latency['max']} ms; api CPU {result['load_api_cpu_seconds']} s over {result['load_seconds']} s"
    )
    print(json.dumps({"benchmark": "sse_streams", "machine": machine(), "result": result}))


if __name__ == "__main__":
    main()
