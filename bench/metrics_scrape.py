"""What a Prometheus scrape of the api's /metrics costs, caught up and catching up on the event log.

    python bench/metrics_scrape.py [--generations 100000] [--accounts 20] [--holders 5] [--scrapes 200]

Fills a private redis-server with `generations` finished generations (records and their five
events each in the log, in the store's format, written straight into Redis: the benchmark is about
the scrape), `accounts` accounts and `holders` key holders; serves the api in-process and GETs
/metrics over real HTTP until the scrapes have folded the whole log (each folds at most
MAX_ENTRIES_PER_SCRAPE entries), then times `scrapes` scrapes with nothing new in the log.
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
from shared.accounts import AccountRegistry
from shared.logs import configure_logging
from shared.models import CreateRequest, GenerationRecord
from shared.settings import AccountConfig, Settings
from shared.states import Phase
from shared.tally import MAX_ENTRIES_PER_SCRAPE

BATCH = 5_000
# A generation's moves from creation to its end, as the log records them.
MOVES = [
    ("", "waiting", "", "pending"),
    ("waiting", "claimed", "pending", "pending"),
    ("claimed", "submitting", "pending", "pending"),
    ("submitting", "processing", "pending", "processing"),
    ("processing", "completed", "processing", "completed"),
]


async def fill(redis: Redis, count: int, owners: list[str], retention: int) -> int:
    """`count` completed generations: their records and every event of theirs in the log."""
    template = GenerationRecord.new(owners[0], CreateRequest(prompt="a benchmark prompt about a kitten"))
    start_ms = int(time.time() * 1000) - count * 100
    entries = 0
    for first in range(0, count, BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(first, min(first + BATCH, count)):
                owner = owners[n % len(owners)]
                created_ms = start_ms + n * 100
                record = template.model_copy(
                    update={
                        "id": f"bench-{n:08d}",
                        "owner": owner,
                        "created_ts": created_ms / 1000,
                        "phase": Phase.COMPLETED,
                    }
                )
                pipe.set(keys.generation(record.id), record.model_dump_json(), ex=retention)
                for step, (source, target, prev_state, state) in enumerate(MOVES):
                    pipe.xadd(
                        keys.EVENTS,
                        {
                            "kind": "generation",
                            "generation_id": record.id,
                            "owner": owner,
                            "from": source,
                            "to": target,
                            "prev_state": prev_state,
                            "state": state,
                            "at": str(created_ms + step * 15_000),
                            "account": "acct-0",
                            "failure_reason": "",
                            "batch_id": "",
                        },
                    )
                    entries += 1
            await pipe.execute()
    return entries


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    assert response.status == 200, text
    return (time.perf_counter() - started) * 1000, text


async def measure(
    redis_url: str, generations: int, accounts: int, holders: int, scrapes: int
) -> dict[str, object]:
    keys_held = [f"bench-key-{n}" for n in range(holders)]
    settings = Settings(_env_file=None, redis_url=redis_url, secret_key=keys_held, log_level="WARNING")  # type: ignore[call-arg]
    redis = Redis.from_url(redis_url, decode_responses=True)
    await redis.flushall()
    await AccountRegistry(redis).sync_from_settings(
        [AccountConfig(name=f"acct-{n}", cookie=f"access_token=t{n}") for n in range(accounts)]
    )
    filled = time.perf_counter()
    entries = await fill(
        redis, generations, [owner_id(key) for key in keys_held], settings.record_retention_seconds
    )
    fill_seconds = time.perf_counter() - filled
    await redis.aclose()

    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    catching_up: list[float] = []
    steady: list[float] = []
    finished = f'luma_queue_generations_finished_total{{reason="",state="completed"}} {float(generations)}'
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                elapsed, text = await scrape(session, url)
                catching_up.append(elapsed)
                if finished in text:
                    break
                assert len(catching_up) <= entries // MAX_ENTRIES_PER_SCRAPE + 2, "the fold does not catch up"
            for _ in range(scrapes):
                elapsed, text = await scrape(session, url)
                steady.append(elapsed)
            size = len(text.encode())
    finally:
        await runner.cleanup()
    steady.sort()
    result: dict[str, object] = {
        "generations": generations,
        "events": entries,
        "accounts": accounts,
        "holders": holders,
        "fill_seconds": round(fill_seconds, 1),
        "catch_up_scrapes": len(catching_up),
        "catch_up_max_ms": round(max(catching_up), 1),
        "catch_up_events_per_second": round(entries / (sum(catching_up) / 1000)),
        "steady_p50_ms": round(statistics.median(steady), 2),
        "steady_p95_ms": round(steady[int(len(steady) * 0.95)], 2),
        "exposition_bytes": size,
    }
    print(
        f"{entries} events: caught up in {len(catching_up)} scrapes (slowest {result['catch_up_max_ms']} ms, "
        f"{result['catch_up_events_per_second']} events/s); then p50 {result['steady_p50_ms']} ms, "
        f"p95 {result['steady_p95_ms']} ms, {size} bytes"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--generations", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--holders", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    configure_logging("WARNING", json_logs=False)
    with tempfile.TemporaryDirectory() as directory:
        try:
            server = RedisServer.started(Path(directory), persistent=False)
        except RedisServerError as exc:
            raise SystemExit(str(exc)) from None
        try:
            result = asyncio.run(
                measure(server.url, args.generations, args.accounts, args.holders, args.scrapes)
            )
        finally:
            server.stop()
    print(json.dumps({"benchmark": "metrics_scrape", "machine": machine(), "result": result}))


if __name__ == "__main__":
    main()
