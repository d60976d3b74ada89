"""Reading a run's outcome from the two sides: our records in Redis and the simulator's own log."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared import keys
from shared.models import GenerationRecord
from simulator.testing import RunningSimulator
from tests.fixtures.simulator import wait_until
from tests.fixtures.stack import TEST_KEYS, headers


async def create_many(
    client: TestClient[Any, Any], prompts: list[str], key: str = TEST_KEYS[0], **extra: Any
) -> list[str]:
    ids = []
    for prompt in prompts:
        response = await client.post(
            "/api/generations/create", json={"prompt": prompt, **extra}, headers=headers(key)
        )
        assert response.status == 200, await response.text()
        ids.append((await response.json())["data"][0]["id"])
    return ids


async def records(redis: Redis, gen_ids: list[str]) -> list[GenerationRecord]:
    raws = await redis.mget([keys.generation(gen_id) for gen_id in gen_ids])
    return [GenerationRecord.model_validate_json(raw) for raw in raws if raw]


def all_terminal(found: list[GenerationRecord], expected: int) -> bool:
    return len(found) == expected and all(record.terminal for record in found)


async def wait_all_terminal(redis: Redis, gen_ids: list[str], within: float) -> list[GenerationRecord]:
    """Wait until every generation has ended (completed or failed) and return their records."""

    async def finished() -> bool:
        return all_terminal(await records(redis, gen_ids), len(gen_ids))

    await wait_until(finished, within=within, interval=0.2)
    return await records(redis, gen_ids)


def creates_per_prompt(simulator: RunningSimulator) -> Counter[str]:
    """How many upstream generations each prompt got: more than 1 means a generation paid twice."""
    return Counter(report["prompt"] for report in simulator.state.generation_reports())


def max_in_flight(simulator: RunningSimulator) -> dict[str, int]:
    return {name: int(stats["max_in_flight"]) for name, stats in simulator.state.account_stats().items()}
