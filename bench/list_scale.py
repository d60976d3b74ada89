"""Does the list endpoint cost the same with 1,000 records as with 1,000,000, filtered or not?

    python bench/list_scale.py [--sizes 1000 1000000] [--requests 2000]

For each size it fills a private redis-server with that many finished generations of one key
holder (written straight into Redis in the store's format, indexes included: the benchmark is
about reads), in batches of 1,000, two thirds completed and one third failed; serves the api
in-process and times over real HTTP, for each query, `GET /api/generations?offset=0&limit=10`
plain, with `state=completed`, with `state=completed,failed` and with the newest `batch_id`. The
target is the largest size's median within 2x of the smallest's, per query, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from support.stack import machine

from api.app import create_app
from api.auth import owner_id
from cli.ports import free_port
from cli.redis_server import RedisServer, RedisServerError
from shared import keys
from shared.logs import configure_logging
from shared.models import CreateRequest, GenerationRecord
from shared.settings import Settings
from shared.states import Phase

KEY = "bench-key"
BATCH = 10_000


QUERIES = {
    "plain": "",
    "state=completed": "&state=completed",
    "state=completed,failed": "&state=completed,failed",
    "batch_id": "&batch_id={batch}",
}


def batch_id(n: int) -> str:
    return f"batch-{n // 1000:06d}"


async def fill(redis: Redis, count: int, retention: int) -> str:
    """`count` finished records, oldest first, with the indexes the store keeps; returns the newest batch."""
    owner = owner_id(KEY)
    template = GenerationRecord.new(owner, CreateRequest(prompt="a benchmark prompt about a kitten"))
    template.upstream = {
        "id": "00000000-0000-0000-0000-000000000000",
        "state": "completed",
        "video": {"url": "https://cdn.example/video.mp4", "width": 1360, "height": 752, "thumbnail": None},
    }
    start = time.time() - count
    for first in range(0, count, BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            indexes: dict[str, dict[str, float]] = {}
            for n in range(first, min(first + BATCH, count)):
                phase = Phase.FAILED if n % 3 == 2 else Phase.COMPLETED
                record = template.model_copy(
                    update={
                        "id": f"bench-{n:08d}",
                        "created_ts": start + n,
                        "phase": phase,
                        "batch_id": batch_id(n),
                    }
                )
                pipe.set(keys.generation(record.id), record.model_dump_json(), ex=retention)
                score = int((start + n) * 1000)
                state = record.state
                for key in (
                    keys.owner_index(owner),
                    keys.owner_state_index(owner, state),
                    keys.batch_index(owner, batch_id(n)),
                    keys.batch_state_index(owner, batch_id(n), state),
                ):
                    indexes.setdefault(key, {})[record.id] = score
            for key, members in indexes.items():
                pipe.zadd(key, members)
            await pipe.execute()
    return batch_id(count - 1)


async def time_list(url: str, query: str, requests: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession(headers={"Secret-Key": KEY}) as session:
        for n in range(requests + 200):
            started = time.perf_counter()
            async with session.get(f"{url}/api/generations?offset=0&limit=10{query}") as response:
                body = await response.json()
            elapsed = time.perf_counter() - started
            assert response.status == 200 and len(body["data"]) == 10, body
            if n >= 200:  # the first requests warm connections and caches
                timings.append(elapsed * 1000)
    return timings


async def measure(redis_url: str, size: int, requests: int) -> dict[str, object]:
    settings = Settings(_env_file=None, redis_url=redis_url, secret_key=[KEY], log_level="WARNING")  # type: ignore[call-arg]
    redis = Redis.from_url(redis_url, decode_responses=True)
    await redis.flushall()
    filled = time.perf_counter()
    newest_batch = await fill(redis, size, settings.record_retention_seconds)
    fill_seconds = time.perf_counter() - filled
    used = (await redis.info("memory"))["used_memory_human"]
    await redis.aclose()
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    result: dict[str, object] = {"records": size, "fill_seconds": round(fill_seconds, 1), "memory": used}
    try:
        for name, query in QUERIES.items():
            ordered = sorted(
                await time_list(f"http://127.0.0.1:{port}", query.format(batch=newest_batch), requests)
            )
            result[name] = {
                "p50_ms": round(statistics.median(ordered), 3),
                "p95_ms": round(ordered[int(len(ordered) * 0.95)], 3),
            }
            print(f"{size:>9} records ({used} in Redis), {name:<24} p50 {result[name]['p50_ms']} ms")  # type: ignore[index]
    finally:
        await runner.cleanup()
    return result


async def run_sizes(url: str, sizes: list[int], requests: int) -> list[dict[str, float]]:
    return [await measure(url, size, requests) for size in sorted(sizes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("WARNING", json_logs=False)
    with tempfile.TemporaryDirectory() as directory:
        # No AOF: the benchmark fills and reads; durability is not what it measures.
        try:
            server = RedisServer.started(Path(directory), persistent=False)
        except RedisServerError as exc:
            raise SystemExit(str(exc)) from None
        try:
            results = asyncio.run(run_sizes(server.url, args.sizes, args.requests))
        finally:
            server.stop()
    largest, smallest = results[-1], results[0]
    ratios = {}
    for name in QUERIES:
        ratio = largest[name]["p50_ms"] / smallest[name]["p50_ms"]  # type: ignore[index]
        ratios[name] = round(ratio, 3)
        verdict = "met" if ratio <= 2 else "NOT met"
        sizes = f"{largest['records']} / {smallest['records']} records"
        print(f"{name:<24} median {sizes}: {ratio:.2f} (<= 2: {verdict})")
    summary = {
        "benchmark": "list_scale",
        "machine": machine(),
        "results": results,
        "p50_ratios": ratios,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
