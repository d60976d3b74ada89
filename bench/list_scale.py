"""Does the list endpoint cost the same with 1,000 records as with 1,000,000?

    python bench/list_scale.py [--sizes 1000 1000000] [--requests 2000]

For each size it fills a private redis-server with that many completed generations of one key
holder (written straight into Redis in the store's format: the benchmark is about reads), serves
the api in-process and times `GET /api/generations?offset=0&limit=10` over real HTTP. The target
is the largest size's median within 2x of the smallest's; both are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from support.stack import free_port, machine

from api.app import create_app
from api.auth import owner_id
from shared import keys
from shared.logs import configure_logging
from shared.models import CreateRequest, GenerationRecord
from shared.settings import Settings

KEY = "bench-key"
BATCH = 10_000


async def fill(redis: Redis, count: int, retention: int) -> None:
    """`count` completed records, oldest first, in the owner's index: what a long history looks like."""
    owner = owner_id(KEY)
    template = GenerationRecord.new(owner, CreateRequest(prompt="a benchmark prompt about a kitten"))
    template.state = "completed"
    template.upstream = {
        "id": "00000000-0000-0000-0000-000000000000",
        "state": "completed",
        "video": {"url": "https://cdn.example/video.mp4", "width": 1360, "height": 752, "thumbnail": None},
    }
    start = time.time() - count
    for first in range(0, count, BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            index: dict[str, float] = {}
            for n in range(first, min(first + BATCH, count)):
                record = template.model_copy(update={"id": f"bench-{n:08d}", "created_ts": start + n})
                pipe.set(keys.generation(record.id), record.model_dump_json(), ex=retention)
                index[record.id] = int((start + n) * 1000)
            pipe.zadd(keys.owner_index(owner), index)
            await pipe.execute()


async def time_list(url: str, requests: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession(headers={"Secret-Key": KEY}) as session:
        for n in range(requests + 200):
            started = time.perf_counter()
            async with session.get(f"{url}/api/generations?offset=0&limit=10") as response:
                body = await response.json()
            elapsed = time.perf_counter() - started
            assert response.status == 200 and len(body["data"]) == 10, body
            if n >= 200:  # the first requests warm connections and caches
                timings.append(elapsed * 1000)
    return timings


async def measure(redis_url: str, size: int, requests: int) -> dict[str, float]:
    settings = Settings(_env_file=None, redis_url=redis_url, secret_key=[KEY], log_level="WARNING")  # type: ignore[call-arg]
    redis = Redis.from_url(redis_url, decode_responses=True)
    await redis.flushall()
    filled = time.perf_counter()
    await fill(redis, size, settings.record_retention_seconds)
    fill_seconds = time.perf_counter() - filled
    used = (await redis.info("memory"))["used_memory_human"]
    await redis.aclose()
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        timings = await time_list(f"http://127.0.0.1:{port}", requests)
    finally:
        await runner.cleanup()
    ordered = sorted(timings)
    result = {
        "records": size,
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "fill_seconds": round(fill_seconds, 1),
    }
    print(f"{size:>9} records ({used} in Redis): p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms")
    return result


async def wait_for_redis(url: str) -> None:
    for _ in range(200):
        try:
            probe = Redis.from_url(url)
            await probe.ping()
            await probe.aclose()
            return
        except RedisConnectionError:
            await asyncio.sleep(0.05)
    raise SystemExit("redis-server did not start")


async def run_sizes(url: str, sizes: list[int], requests: int) -> list[dict[str, float]]:
    await wait_for_redis(url)
    return [await measure(url, size, requests) for size in sorted(sizes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("WARNING", json_logs=False)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            results = asyncio.run(run_sizes(f"redis://127.0.0.1:{port}/0", args.sizes, args.requests))
        finally:
            server.terminate()
            server.wait(10)
    ratio = results[-1]["p50_ms"] / results[0]["p50_ms"]
    verdict = "met" if ratio <= 2 else "NOT met"
    largest, smallest = results[-1]["records"], results[0]["records"]
    print(f"median ratio {largest} / {smallest} records: {ratio:.2f} (target <= 2: {verdict})")
    summary = {
        "benchmark": "list_scale",
        "machine": machine(),
        "results": results,
        "p50_ratio": round(ratio, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
