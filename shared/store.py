"""The only code that writes generation records, their indexes and the wait queues.

Every change of a generation's phase goes through one door: `GenerationStore.transition`, one Lua
step that checks the move against the table in shared/states.py, rewrites the record, keeps the
indexes that lists and filters read, and appends the event to the log (shared/events.py), all or
nothing. The same Lua function (`lq_transition`) is what the scheduler's claim and requeue run
inside their own atomic steps (worker/scheduler.py embeds `store.lua_library`), so a claim and
its transition can never be separated by a crash either.

Scheduling state that only workers change (leases, account usage) lives in worker/scheduler.py
and shared/accounts.py; this module reads some of it to tell a caller where it stands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from redis.asyncio import Redis

from shared import keys
from shared.models import GenerationRecord
from shared.settings import Settings
from shared.states import PUBLIC_STATE, TRANSITIONS, Phase

log = structlog.get_logger(__name__)

# Placeholders that _lua_key() turns into Lua variables.
_HOLE = "\x00"


def _lua_key(template: Callable[..., str], *variables: str) -> str:
    """A Lua expression building the key `template(*variables)` from Lua variables of those names."""
    parts = template(*([_HOLE] * len(variables))).split(_HOLE)
    pieces = [json.dumps(parts[0])]
    for variable, literal in zip(variables, parts[1:], strict=True):
        pieces.append(variable)
        if literal:
            pieces.append(json.dumps(literal))
    return " .. ".join(pieces)


# The state table, the public states and the key schema as Lua sees them. `lq_transition` is the
# one door; `lq_insert` writes a new record (the move from nothing to `waiting`).
_LIBRARY = """
local LQ_PUBLIC = cjson.decode(%(public)s)
local LQ_NEXT = cjson.decode(%(next)s)
local LQ_RETENTION_MS = %(retention_ms)d
local LQ_EVENTS_MAX = %(events_max)d
local LQ_OWNER_EVENTS_MAX = %(owner_events_max)d

local function lq_gen_key(id) return %(gen_key)s end
local function lq_history_key(id) return %(history_key)s end
local function lq_owner_key(owner) return %(owner_key)s end
local function lq_owner_state_key(owner, state) return %(owner_state_key)s end
local function lq_batch_key(owner, batch) return %(batch_key)s end
local function lq_batch_state_key(owner, batch, state) return %(batch_state_key)s end
local function lq_owner_events_key(owner) return %(owner_events_key)s end
local LQ_EVENTS = %(events_key)s

local function lq_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lq_present(value) return value ~= nil and value ~= cjson.null end

-- Keep a sorted index of one holder's generations: add, trim what retention dropped, expire.
local function lq_index(key, score, id, now_ms)
  redis.call('ZADD', key, score, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - LQ_RETENTION_MS)
  redis.call('PEXPIRE', key, LQ_RETENTION_MS)
end

-- Move the generation between the per-state indexes when its public state changes.
local function lq_reindex(rec, old_state, new_state, now_ms)
  if old_state == new_state then return end
  local score = redis.call('ZSCORE', lq_owner_key(rec.owner), rec.id) or (rec.created_ts * 1000)
  local batch = lq_present(rec.batch_id) and rec.batch_id or nil
  if old_state ~= '' then
    redis.call('ZREM', lq_owner_state_key(rec.owner, old_state), rec.id)
    if batch then redis.call('ZREM', lq_batch_state_key(rec.owner, batch, old_state), rec.id) end
  end
  lq_index(lq_owner_state_key(rec.owner, new_state), score, rec.id, now_ms)
  if batch then lq_index(lq_batch_state_key(rec.owner, batch, new_state), score, rec.id, now_ms) end
end

-- Append one event: to the log of everything, to the owner's stream (same id), and to the
-- generation's own history. `doc` (the record as it now is) rides along only when a webhook
-- will be sent for this change, so the log stays small for everyone else.
local function lq_emit(rec, raw, from, to, now_ms)
  local old_state = from ~= '' and LQ_PUBLIC[from] or ''
  local new_state = LQ_PUBLIC[to]
  local fields = {'kind', 'generation', 'generation_id', rec.id, 'owner', rec.owner,
    'from', from, 'to', to, 'state', new_state, 'prev_state', old_state, 'at', string.format('%%d', now_ms)}
  for _, name in ipairs({'account', 'failure_reason', 'batch_id'}) do
    if lq_present(rec[name]) then
      table.insert(fields, name)
      table.insert(fields, tostring(rec[name]))
    end
  end
  local shared = #fields
  if lq_present(rec.callback_url) and old_state ~= new_state then
    table.insert(fields, 'doc')
    table.insert(fields, raw)
  end
  local id = redis.call('XADD', LQ_EVENTS, 'MAXLEN', '~', LQ_EVENTS_MAX, '*', unpack(fields))
  local mine = {unpack(fields, 1, shared)}
  local owner_stream = lq_owner_events_key(rec.owner)
  -- The owner's stream reuses the log's id, so a client's Last-Event-ID means the same in both;
  -- should its last id ever be ahead (the log was deleted), it takes a fresh one instead.
  local added = redis.pcall('XADD', owner_stream, 'MAXLEN', '~', LQ_OWNER_EVENTS_MAX, id, unpack(mine))
  if type(added) == 'table' and added.err then
    redis.call('XADD', owner_stream, 'MAXLEN', '~', LQ_OWNER_EVENTS_MAX, '*', unpack(mine))
  end
  local entry = {id = id}
  for i = 1, shared, 2 do entry[fields[i]] = fields[i + 1] end
  local history = lq_history_key(rec.id)
  redis.call('RPUSH', history, cjson.encode(entry))
  local ttl = redis.call('PTTL', lq_gen_key(rec.id))
  if ttl > 0 then redis.call('PEXPIRE', history, ttl) end
  return id
end

-- Store a new generation (nothing -> waiting): record, owner and state indexes, batch index,
-- and its first event. The wait queue is the caller's business (it knows the order).
local function lq_insert(raw, score, now_ms)
  local rec = cjson.decode(raw)
  redis.call('SET', lq_gen_key(rec.id), raw, 'PX', LQ_RETENTION_MS)
  lq_index(lq_owner_key(rec.owner), score, rec.id, now_ms)
  if lq_present(rec.batch_id) then
    lq_index(lq_batch_key(rec.owner, rec.batch_id), score, rec.id, now_ms)
  end
  lq_reindex(rec, '', LQ_PUBLIC[rec.phase], now_ms)
  lq_emit(rec, raw, '', rec.phase, now_ms)
  return rec
end

-- The one door. `expect`: a set of phases the caller believes it is in (nil: any); `fence`: the
-- intent's token that must still be the record's (nil: no fence); `sets`: fields to write.
-- Returns {outcome, previous phase, record JSON}; outcome is ok, missing, unexpected, fenced
-- or illegal, and anything but ok has written nothing.
local function lq_transition(id, to, expect, fence, sets)
  local key = lq_gen_key(id)
  local raw = redis.call('GET', key)
  if not raw then return {'missing', '', ''} end
  local rec = cjson.decode(raw)
  local from = rec.phase
  if expect and not expect[from] then return {'unexpected', from, raw} end
  if fence and tostring(rec.fence) ~= fence then return {'fenced', from, raw} end
  if not (LQ_NEXT[from] and LQ_NEXT[from][to]) then return {'illegal', from, raw} end
  for name, value in pairs(sets) do rec[name] = value end
  rec.phase = to
  rec.state = LQ_PUBLIC[to]
  raw = cjson.encode(rec)
  redis.call('SET', key, raw, 'KEEPTTL')
  if from ~= to then
    local now_ms = lq_now_ms()
    lq_reindex(rec, LQ_PUBLIC[from], LQ_PUBLIC[to], now_ms)
    lq_emit(rec, raw, from, to, now_ms)
  end
  return {'ok', from, raw}
end

local function lq_set(csv)
  if csv == '' then return nil end
  local set = {}
  for name in string.gmatch(csv, '[^,]+') do set[name] = true end
  return set
end
"""

# ARGV: gen id, target phase, expected phases (comma separated, '' for any), fence ('' for
# none), fields to set (a JSON object).
_TRANSITION = """
local fence = ARGV[4] ~= '' and ARGV[4] or nil
return lq_transition(ARGV[1], ARGV[2], lq_set(ARGV[3]), fence, cjson.decode(ARGV[5]))
"""

# Enqueue new generations: records, indexes, wait queue, fairness ring and a wake-up, all or
# nothing, and only while the queue has room (so a 429 stores nothing). ARGV: max depth, owner,
# then per generation: record JSON, index score, pinned account ('' for none).
_CREATE = """
local max_depth, owner = tonumber(ARGV[1]), ARGV[2]
local count = (#ARGV - 2) / 3
local depth = redis.call('ZCARD', KEYS[1])
if depth + count > max_depth then return -1 end
local now_ms = lq_now_ms()
for i = 0, count - 1 do
  local raw, score, pin = ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i]
  local rec = lq_insert(raw, score, now_ms)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[3], seq, rec.id)
  redis.call('ZADD', KEYS[1], seq, rec.id)
  if pin ~= '' then redis.call('HSET', KEYS[4], rec.id, pin) end
end
local turn = redis.call('GET', KEYS[5]) or '0'
redis.call('ZADD', KEYS[6], 'NX', turn, owner)
redis.call('LPUSH', KEYS[7], '1')
redis.call('LTRIM', KEYS[7], 0, 999)
return depth + count
"""


class QueueFull(Exception):
    """The wait queue is at MAX_QUEUE_DEPTH; nothing was stored."""


class Outcome(StrEnum):
    OK = "ok"  #: the move was made (or, to the same phase, the fields were written)
    MISSING = "missing"  #: no such record (never made, or dropped by retention)
    UNEXPECTED = "unexpected"  #: the record is in another phase than the caller expected
    FENCED = "fenced"  #: the record's intent carries another fencing token: a newer attempt owns it
    ILLEGAL = "illegal"  #: the state table does not allow this move from the record's phase


@dataclass(frozen=True)
class Transition:
    """What a transition did: its outcome, the phase it found, and the record as it now stands."""

    outcome: Outcome
    previous: Phase | None
    record: GenerationRecord | None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class PoolSnapshot:
    """What an estimate needs from the pool: slots in all, slots free, how long a run takes."""

    total_slots: int
    free_slots: int
    generation_seconds: float


# Fields a transition may not set: identity, and what the move itself decides.
_FIXED_FIELDS = frozenset({"id", "owner", "phase", "state", "created_at", "created_ts"})
_WRITABLE_FIELDS = frozenset(GenerationRecord.model_fields) - _FIXED_FIELDS


def _encode_fields(fields: dict[str, Any]) -> str:
    """The fields to set as the JSON object the Lua merges into the record (None clears one)."""
    unknown = set(fields) - _WRITABLE_FIELDS
    if unknown:
        raise ValueError(f"a transition cannot set {sorted(unknown)}")
    encoded = {
        name: (
            json.dumps(value, separators=(",", ":")) if name == "upstream" and value is not None else value
        )
        for name, value in fields.items()
    }
    return json.dumps(encoded, separators=(",", ":"))


class GenerationStore:
    def __init__(
        self,
        redis: Redis,
        *,
        retention_seconds: int,
        default_generation_seconds: float,
        event_log_max_len: int = 1_000_000,
        holder_events_max_len: int = 10_000,
    ) -> None:
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.default_generation_seconds = default_generation_seconds
        self.lua_library = _LIBRARY % {
            "public": _lua_string(json.dumps({phase.value: state for phase, state in PUBLIC_STATE.items()})),
            "next": _lua_string(
                json.dumps(
                    {phase.value: {n.value: True for n in nexts} for phase, nexts in TRANSITIONS.items()}
                )
            ),
            "retention_ms": retention_seconds * 1000,
            "events_max": event_log_max_len,
            "owner_events_max": holder_events_max_len,
            "gen_key": _lua_key(keys.generation, "id"),
            "history_key": _lua_key(keys.generation_events, "id"),
            "owner_key": _lua_key(keys.owner_index, "owner"),
            "owner_state_key": _lua_key(keys.owner_state_index, "owner", "state"),
            "batch_key": _lua_key(keys.batch_index, "owner", "batch"),
            "batch_state_key": _lua_key(keys.batch_state_index, "owner", "batch", "state"),
            "owner_events_key": _lua_key(keys.owner_events, "owner"),
            "events_key": json.dumps(keys.EVENTS),
        }
        self._create = redis.register_script(self.lua_library + _CREATE)
        self._transition = redis.register_script(self.lua_library + _TRANSITION)

    # --- writes ---------------------------------------------------------------------------------

    async def enqueue_new(self, record: GenerationRecord, *, max_depth: int, pin: str | None) -> int:
        """Store a new generation and put it at the back of its owner's queue; returns the depth."""
        return await self.enqueue_many([(record, pin)], max_depth=max_depth)

    async def enqueue_many(self, items: list[tuple[GenerationRecord, str | None]], *, max_depth: int) -> int:
        """Store generations of one owner, in order, at the back of its queue: all or none."""
        owner = items[0][0].owner
        args: list[str | int] = [max_depth, owner]
        for record, pin in items:
            if record.owner != owner or record.phase is not Phase.WAITING:
                raise ValueError("enqueue_many takes new generations of one owner")
            # Milliseconds with a microsecond fraction: two creates in the same millisecond
            # must still list newest first, not in the random order of their ids.
            args += [record.model_dump_json(), f"{record.created_ts * 1000:.3f}", pin or ""]
        depth = await self._create(
            keys=[
                keys.WAIT_ALL,
                keys.WAIT_SEQ,
                keys.wait_queue(owner),
                keys.WAIT_PIN,
                keys.WAIT_TURN,
                keys.WAIT_OWNERS,
                keys.WAKE,
            ],
            args=args,
        )
        if int(depth) < 0:
            raise QueueFull
        return int(depth)

    async def transition(
        self,
        gen_id: str,
        to: Phase,
        *,
        expect: Iterable[Phase] | None = None,
        fenced_by: int | None = None,
        **fields: Any,
    ) -> Transition:
        """Move a generation to `to` and write `fields`, if the state table allows it from where it is.

        `expect` narrows the phases the caller is prepared to move it from (a race lost is an
        `unexpected` outcome); `fenced_by` makes the write conditional on the intent's token
        still being the record's `fence`. Anything but an `ok` outcome has changed nothing.
        """
        answer = await self._transition(
            args=[
                gen_id,
                to.value,
                ",".join(phase.value for phase in expect) if expect is not None else "",
                "" if fenced_by is None else str(fenced_by),
                _encode_fields(fields),
            ]
        )
        outcome, previous, raw = (str(part) for part in answer)
        result = Transition(
            outcome=Outcome(outcome),
            previous=Phase(previous) if previous else None,
            record=GenerationRecord.model_validate_json(raw) if raw else None,
        )
        if result.outcome is Outcome.ILLEGAL:
            log.warning("transition_refused", generation_id=gen_id, current=previous, to=to.value)
        return result

    async def next_fence(self) -> int:
        """A fencing token for a new intent, larger than every one before it."""
        return int(await self.redis.incr(keys.FENCE))

    async def adopt_upstream(self, upstream_id: str, gen_id: str) -> bool:
        """Record that `upstream_id` is `gen_id`'s; False if another generation already has it."""
        owner = await self.redis.set(
            keys.upstream(upstream_id), gen_id, nx=True, get=True, ex=self.retention_seconds
        )
        return owner in (None, gen_id)

    # --- reads ----------------------------------------------------------------------------------

    async def upstream_owners(self, upstream_ids: list[str]) -> list[str | None]:
        """Which of our generations owns each upstream id, if any."""
        if not upstream_ids:
            return []
        return list(await self.redis.mget([keys.upstream(upstream_id) for upstream_id in upstream_ids]))

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


def generation_store(redis: Redis, settings: Settings) -> GenerationStore:
    """The store as a process's settings configure it."""
    return GenerationStore(
        redis,
        retention_seconds=settings.record_retention_seconds,
        default_generation_seconds=settings.default_generation_seconds,
        event_log_max_len=settings.event_log_max_len,
        holder_events_max_len=settings.holder_events_max_len,
    )


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal (JSON's escapes are a subset of Lua's for what we emit)."""
    return json.dumps(text)


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
