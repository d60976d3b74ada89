"""The only code that reads and writes generation records, owner indexes and the wait queues.

Scheduling state that only workers change (leases, account usage) lives in worker/scheduler.py
and shared/accounts.py; this module reads some of it to tell a caller where it stands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.models import GenerationRecord, Phase

# Enqueue a new generation: record, owner index, wait queue, fairness ring and a wake-up, all
# or nothing, and only while the queue has room (so a 429 stores nothing).
_CREATE = """
local depth = redis.call('ZCARD', KEYS[9])
if tonumber(ARGV[6]) <= depth then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
redis.call('ZADD', KEYS[9], seq, ARGV[2])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[8], ARGV[2], ARGV[7]) end
local turn = redis.call('GET', KEYS[6]) or '0'
redis.call('ZADD', KEYS[4], 'NX', turn, ARGV[4])
redis.call('LPUSH', KEYS[7], '1')
redis.call('LTRIM', KEYS[7], 0, 999)
return depth + 1
"""

# Replace a record only while its intent still carries the caller's fencing token: a job that
# lost its claim (a newer submit took over) must not overwrite what the newer one wrote.
_SAVE_FENCED = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local intent = cjson.decode(current)['intent']
if type(intent) ~= 'table' or tostring(intent['fence']) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
"""


class QueueFull(Exception):
    """The wait queue is at MAX_QUEUE_DEPTH; nothing was stored."""


@dataclass(frozen=True)
class PoolSnapshot:
    """What an estimate needs from the pool: slots in all, slots free, how long a run takes."""

    total_slots: int
    free_slots: int
    generation_seconds: float


class GenerationStore:
    def __init__(self, redis: Redis, *, retention_seconds: int, default_generation_seconds: float) -> None:
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.default_generation_seconds = default_generation_seconds
        self._create = redis.register_script(_CREATE)
        self._save_fenced = redis.register_script(_SAVE_FENCED)

    async def enqueue_new(self, record: GenerationRecord, *, max_depth: int, pin: str | None) -> int:
        """Store a new generation and put it at the back of its owner's queue; returns the depth."""
        now_ms = int(record.created_ts * 1000)
        depth = await self._create(
            keys=[
                keys.generation(record.id),
                keys.owner_index(record.owner),
                keys.wait_queue(record.owner),
                keys.WAIT_OWNERS,
                keys.WAIT_SEQ,
                keys.WAIT_TURN,
                keys.WAKE,
                keys.WAIT_PIN,
                keys.WAIT_ALL,
            ],
            args=[
                record.model_dump_json(),
                record.id,
                # Milliseconds with a microsecond fraction: two creates in the same millisecond
                # must still list newest first, not in the random order of their ids.
                f"{record.created_ts * 1000:.3f}",
                record.owner,
                self.retention_seconds,
                max_depth,
                pin or "",
                now_ms - self.retention_seconds * 1000,
            ],
        )
        if int(depth) < 0:
            raise QueueFull
        return int(depth)

    async def get(self, gen_id: str) -> GenerationRecord | None:
        raw = await self.redis.get(keys.generation(gen_id))
        return GenerationRecord.model_validate_json(raw) if raw else None

    async def get_owned(self, owner: str, gen_id: str) -> GenerationRecord | None:
        """A record only if it belongs to `owner`: another holder's id reads as unknown."""
        record = await self.get(gen_id)
        return record if record is not None and record.owner == owner else None

    async def get_many(self, gen_ids: list[str]) -> list[GenerationRecord]:
        if not gen_ids:
            return []
        raws = await self.redis.mget([keys.generation(gen_id) for gen_id in gen_ids])
        return [GenerationRecord.model_validate_json(raw) for raw in raws if raw]

    async def list_owned(self, owner: str, offset: int, limit: int) -> list[GenerationRecord]:
        """Newest first, from the owner's sorted index: the cost grows with `limit`, not history."""
        gen_ids = await self.redis.zrevrange(keys.owner_index(owner), offset, offset + limit - 1)
        return await self.get_many(list(gen_ids))

    async def save(self, record: GenerationRecord) -> None:
        await self.redis.set(keys.generation(record.id), record.model_dump_json(), keepttl=True)

    async def save_fenced(self, record: GenerationRecord, fence: int) -> bool:
        """Save only while the stored intent still has `fence`; False means we lost the claim."""
        saved = await self._save_fenced(
            keys=[keys.generation(record.id)], args=[record.model_dump_json(), str(fence)]
        )
        return bool(saved)

    async def waiting_positions(self, records: list[GenerationRecord]) -> dict[str, int]:
        """1-based places in the pool's queue, as the round-robin between owners will serve them.

        Owner o's i-th waiting generation starts after its own i predecessors and, from every
        other owner, the ones served in the rounds before (and, for owners ahead in turn, the
        same round) — so a small caller behind a large batch sees a small number.
        """
        waiting = [record for record in records if record.phase == Phase.WAITING]
        if not waiting:
            return {}
        owners = await self.redis.zrange(keys.WAIT_OWNERS, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.zcard(keys.wait_queue(owner))
            for record in waiting:
                pipe.zrank(keys.wait_queue(record.owner), record.id)
            answers = await pipe.execute()
        lengths = dict(zip(owners, (int(n) for n in answers[: len(owners)]), strict=True))
        order = {owner: turn for turn, owner in enumerate(owners)}
        positions: dict[str, int] = {}
        for record, rank in zip(waiting, answers[len(owners) :], strict=True):
            if rank is None or record.owner not in order:
                continue
            index = int(rank)
            ahead = index
            for other, length in lengths.items():
                if other == record.owner:
                    continue
                rounds = index + 1 if order[other] < order[record.owner] else index
                ahead += min(length, rounds)
            positions[record.id] = ahead + 1
        return positions

    async def generation_seconds(self) -> float:
        measured = await self.redis.get(keys.GEN_SECONDS)
        return float(measured) if measured else self.default_generation_seconds

    async def record_generation_seconds(self, seconds: float, weight: float = 0.2) -> None:
        """Fold one measured run into the moving average behind every estimate."""
        previous = await self.redis.get(keys.GEN_SECONDS)
        value = seconds if previous is None else (1 - weight) * float(previous) + weight * seconds
        await self.redis.set(keys.GEN_SECONDS, f"{value:.3f}")

    @staticmethod
    def estimate_wait(position: int, pool: PoolSnapshot) -> float:
        """Seconds until the generation at `position` takes a slot, from the pool's throughput."""
        ahead = position - 1
        if ahead < pool.free_slots:
            return 0.0
        if pool.total_slots <= 0:
            return math.inf
        rounds = (ahead - pool.free_slots) // pool.total_slots + 1
        return round(rounds * pool.generation_seconds, 1)


def views(
    records: list[GenerationRecord], positions: dict[str, int], pool: PoolSnapshot | None
) -> list[dict[str, Any]]:
    """Caller-facing views with queue places and honest waits for the ones still queued."""
    shown = []
    for record in records:
        position = positions.get(record.id)
        wait: float | None = None
        if position is not None and pool is not None:
            estimate = GenerationStore.estimate_wait(position, pool)
            wait = None if math.isinf(estimate) else estimate
        elif record.phase == Phase.WAITING and position is None:
            # Read as waiting, yet no longer in the queue: a worker claimed it a moment ago.
            wait = 0.0
        shown.append(record.view(queue_position=position, estimate_wait_seconds=wait))
    return shown
