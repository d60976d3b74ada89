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

import heapq
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from redis.asyncio import Redis

from shared import keys
from shared.models import GenerationRecord
from shared.settings import Settings
from shared.states import NOT_SUBMITTED, PUBLIC_STATE, TRANSITIONS, FailureReason, Phase, State

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

-- A generation's record as a table, for a decision that depends on it (nil: there is none).
-- Only reads: a change goes through lq_transition.
local function lq_read(id)
  local raw = redis.call('GET', lq_gen_key(id))
  if not raw then return nil end
  return cjson.decode(raw)
end

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

-- Where waiting generations stand: their places in the pool's round-robin between owners, and
-- how long until they take a slot, from the active accounts' slots and the measured run time.
local LQ_DEFAULT_GENERATION_SECONDS = %(default_generation_seconds)s
local LQ_ACCOUNTS = %(accounts_key)s
local LQ_WAIT_OWNERS = %(wait_owners_key)s
local LQ_WAIT_PIN = %(wait_pin_key)s
local LQ_GEN_SECONDS = %(gen_seconds_key)s
local function lq_account_key(name) return %(account_key)s end
local function lq_leases_key(name) return %(leases_key)s end
local function lq_wait_queue_key(owner) return %(wait_queue_key)s end

-- Make `id` (already `waiting`) its owner's next generation: first in the owner's queue and in
-- wait:all, and the owner in the round robin (wait:owners, at the current turn) if it was not.
local function lq_queue_front(queue, all, owners, turn, id, owner)
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  local score = 0
  if head[2] then score = tonumber(head[2]) - 1 end
  redis.call('ZADD', queue, score, id)
  redis.call('ZADD', all, score, id)
  redis.call('ZADD', owners, 'NX', redis.call('GET', turn) or '0', owner)
end

-- Slots of the active accounts among `names`, and how many of them are free now.
local function lq_slots(names, now_ms)
  local total, free = 0, 0
  for _, name in ipairs(names) do
    local h = redis.call('HMGET', lq_account_key(name), 'state', 'max_concurrency')
    if h[1] == 'active' then
      local limit = tonumber(h[2] or '0') or 0
      local used = redis.call('ZCOUNT', lq_leases_key(name), now_ms, '+inf')
      total = total + limit
      free = free + math.max(0, limit - used)
    end
  end
  return total, free
end

local function lq_generation_seconds()
  return tonumber(redis.call('GET', LQ_GEN_SECONDS) or '') or LQ_DEFAULT_GENERATION_SECONDS
end

-- Seconds until the generation at `position` takes a slot (-1: no account can run anything).
local function lq_wait(position, total, free, seconds)
  local ahead = position - 1
  if ahead < free then return 0 end
  if total <= 0 then return -1 end
  return (math.floor((ahead - free) / total) + 1) * seconds
end

-- For each (id, owner): its 1-based place, as the round-robin will serve it (owner o's i-th
-- waiting generation starts after its own i predecessors and, from every other owner, the ones
-- served in the rounds before: a small caller behind a large batch sees a small number), and its
-- wait. Place 0: not in the queue any more (a worker claimed it a moment ago). A generation
-- pinned to the account holding its image waits for that account's slots.
local function lq_places(ids, owners)
  local order, lengths = {}, {}
  for turn, owner in ipairs(redis.call('ZRANGE', LQ_WAIT_OWNERS, 0, -1)) do
    order[owner] = turn
    lengths[owner] = redis.call('ZCARD', lq_wait_queue_key(owner))
  end
  local now_ms = lq_now_ms()
  local total, free = lq_slots(redis.call('SMEMBERS', LQ_ACCOUNTS), now_ms)
  local seconds = lq_generation_seconds()
  local pinned = {}
  local out = {}
  for i, id in ipairs(ids) do
    local owner = owners[i]
    local rank = order[owner] and redis.call('ZRANK', lq_wait_queue_key(owner), id)
    if rank then
      local ahead = rank
      for other, length in pairs(lengths) do
        if other ~= owner then
          local rounds = rank
          if order[other] < order[owner] then rounds = rank + 1 end
          ahead = ahead + math.min(length, rounds)
        end
      end
      local t, f = total, free
      local pin = redis.call('HGET', LQ_WAIT_PIN, id)
      if pin then
        pinned[pin] = pinned[pin] or {lq_slots({pin}, now_ms)}
        if pinned[pin][1] > 0 then t, f = pinned[pin][1], pinned[pin][2] end
      end
      table.insert(out, ahead + 1)
      table.insert(out, tostring(lq_wait(ahead + 1, t, f, seconds)))
    else
      table.insert(out, 0)
      table.insert(out, '0')
    end
  end
  return out
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

# Enqueue new generations of one owner, and say where they stand: the whole create in one step.
# In order, before anything is written: an Idempotency-Key already used answers what it made (or
# refuses a different body); then whether any account can take work (none active: refused, unless
# no account is registered yet); the pool's queue bound (MAX_QUEUE_DEPTH, lowered to the sum of
# the accounts' own max_queue when every enabled one sets it); the holder's own bound; and the
# holder's creates over the last minute (an operator's overrides in holder:{owner}:limits win over
# the defaults). Any refusal writes nothing. Then: records, indexes, wait queue (pinned to the
# account holding an uploaded image, if any), fairness ring, a wake-up, and each one's place.
# KEYS: wait:all, wait:seq, wait:{owner}, wait:pin, wait:turn, wait:owners, wake,
#       holder limits, holder creates, idempotency key (unused when none), start deadlines
# ARGV: max depth, owner, holder max queued, creates per minute (0: no limit), idempotency hash
#       ('' for none), idempotency ttl s, batch id ('' for none), then per generation: record
#       JSON, index score, and the upload-account keys of its image and image_end ('' for none).
# Returns {'created', depth, remaining creates or -1, creates per minute, then place and wait of
#       each} | {'replay', batch id, ids...} | {'reused'} | {'no_account', retry s or -1}
#       | {'queue_full', depth, retry s} | {'holder_full', limit, retry s}
#       | {'rate_limited', limit, retry ms}
_CREATE = """
local max_depth, owner = tonumber(ARGV[1]), ARGV[2]
local idem_hash, idem_ttl, batch_id = ARGV[5], ARGV[6], ARGV[7]
local first = 8
local count = (#ARGV - first + 1) / 4
if idem_hash ~= '' then
  local seen = redis.call('GET', KEYS[10])
  if seen then
    local earlier = cjson.decode(seen)
    if earlier.hash ~= idem_hash then return {'reused'} end
    local answer = {'replay', earlier.batch_id or ''}
    for _, id in ipairs(earlier.ids) do table.insert(answer, id) end
    return answer
  end
end
local now_ms = lq_now_ms()
local names = redis.call('SMEMBERS', LQ_ACCOUNTS)
local active, counted, bounded, all_bounded, spent_wait = false, 0, 0, true, nil
for _, name in ipairs(names) do
  local h = redis.call('HMGET', lq_account_key(name), 'state', 'max_queue')
  if h[1] == 'active' then active = true end
  if h[1] ~= 'disabled' then
    counted = counted + 1
    local bound = tonumber(h[2] or '')
    if bound then bounded = bounded + bound else all_bounded = false end
  end
  if h[1] == 'spent' then
    -- Its capacity is read again when its usage lock lapses (no lock: at the next upkeep tick).
    local lapse = math.max(0, redis.call('PTTL', %(usage_lock_key)s))
    spent_wait = math.min(spent_wait or lapse, lapse)
  end
end
if #names > 0 and not active then
  return {'no_account', spent_wait and math.max(1, math.ceil(spent_wait / 1000)) or -1}
end
if counted > 0 and all_bounded then max_depth = math.min(max_depth, bounded) end
local function retry_after()
  local total = lq_slots(names, now_ms)
  return math.max(1, math.ceil(lq_generation_seconds() / math.max(1, total)))
end
local depth = redis.call('ZCARD', KEYS[1])
if depth + count > max_depth then return {'queue_full', max_depth, retry_after()} end
local overrides = redis.call('HMGET', KEYS[8], 'max_queued', 'creates_per_minute')
local holder_max = tonumber(overrides[1] or ARGV[3])
if redis.call('ZCARD', KEYS[3]) + count > holder_max then
  return {'holder_full', holder_max, retry_after()}
end
local per_minute = tonumber(overrides[2] or ARGV[4])
local remaining = -1
if per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now_ms - 60000)
  local recent = redis.call('ZCARD', KEYS[9])
  if recent + count > per_minute then
    local retry_ms = 60000
    if count <= per_minute then
      -- Enough of the minute's creates must age out for this many to fit.
      local must_age = recent + count - per_minute - 1
      local oldest = redis.call('ZRANGE', KEYS[9], must_age, must_age, 'WITHSCORES')
      retry_ms = math.max(1, tonumber(oldest[2]) + 60000 - now_ms)
    end
    return {'rate_limited', per_minute, retry_ms}
  end
  remaining = per_minute - recent - count
end
local ids, owners = {}, {}
for i = 0, count - 1 do
  local at = first + 4 * i
  local rec = lq_insert(ARGV[at], ARGV[at + 1], now_ms)
  table.insert(ids, rec.id)
  table.insert(owners, owner)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[3], seq, rec.id)
  redis.call('ZADD', KEYS[1], seq, rec.id)
  for _, image_key in ipairs({ARGV[at + 2], ARGV[at + 3]}) do
    local holder = image_key ~= '' and redis.call('GET', image_key)
    if holder then
      redis.call('HSET', KEYS[4], rec.id, holder)
      break
    end
  end
  if per_minute > 0 then redis.call('ZADD', KEYS[9], now_ms, rec.id) end
  if lq_present(rec.start_deadline_ts) then
    redis.call('ZADD', KEYS[11], math.floor(rec.start_deadline_ts * 1000), rec.id)
  end
end
if per_minute > 0 then redis.call('PEXPIRE', KEYS[9], 60000) end
if idem_hash ~= '' then
  local made = cjson.encode({hash = idem_hash, ids = ids, batch_id = batch_id})
  redis.call('SET', KEYS[10], made, 'EX', idem_ttl)
end
local turn = redis.call('GET', KEYS[5]) or '0'
redis.call('ZADD', KEYS[6], 'NX', turn, owner)
redis.call('LPUSH', KEYS[7], '1')
redis.call('LTRIM', KEYS[7], 0, 999)
local answer = {'created', depth + count, remaining, per_minute}
for _, value in ipairs(lq_places(ids, owners)) do table.insert(answer, value) end
return answer
"""

# Where waiting generations stand. ARGV: pairs of gen id and owner. Returns place and wait of each.
_PLACES = """
local ids, owners = {}, {}
for i = 1, #ARGV, 2 do
  table.insert(ids, ARGV[i])
  table.insert(owners, ARGV[i + 1])
end
return lq_places(ids, owners)
"""

# Take a generation back before it reaches the upstream (its owner's cancel, or a deadline):
# `waiting` leaves its queue at once, `claimed` is refused its submit (its job gives the slot and
# the capacity back when it finds it failed). KEYS: wait:{owner}, wait:all, wait:pin,
# wait:owners. ARGV: gen id, failure reason, message, finished ts, phases it may be taken from.
# Returns lq_transition's answer.
_TAKE_BACK = """
local moved = lq_transition(ARGV[1], 'failed', lq_set(ARGV[5]), nil,
  {failure_reason = ARGV[2], failure_message = ARGV[3], finished_ts = tonumber(ARGV[4])})
if moved[1] == 'ok' and moved[2] == 'waiting' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('ZCARD', KEYS[1]) == 0 then
    local owner = cjson.decode(moved[3]).owner
    redis.call('ZREM', KEYS[4], owner)
  end
end
return moved
"""


# Take an account out of the pool (an operator's DELETE). Its generations in flight (claimed or
# being created there: `submitting`; created there: `running`) make it busy: refused, unless
# `force`, which moves each back to `waiting` at the front of its owner's queue through the one
# door, clearing what tied it to the account, so that it runs again on another account. Then the
# account's keys go, all in this one step: no worker can claim on it once this has run.
# KEYS: accounts, account, leases, submitting, running, cost, creates window, poll lock, usage
#       lock, heartbeat lock, wait:all, wait:owners, wait:turn
# ARGV: name, '1' to force
# Returns {'missing'} | {'busy', in flight} | {'removed', rerouted ids...}
_REMOVE_ACCOUNT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return {'missing'}
end
local ids = redis.call('SMEMBERS', KEYS[4])
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do table.insert(ids, id) end
if #ids > 0 and ARGV[2] ~= '1' then return {'busy', #ids} end
local rerouted = {'removed'}
local from = {claimed = true, submitting = true, queued_upstream = true, processing = true}
local cleared = {account = cjson.null, fence = cjson.null, intent_at = cjson.null,
  upstream_id = cjson.null, upstream = cjson.null, upstream_image = cjson.null,
  upstream_image_end = cjson.null, video_url = cjson.null, dispatch_seq = cjson.null,
  started_ts = cjson.null, submitted_ts = cjson.null, observed_ts = cjson.null,
  last_live_ts = cjson.null, completed_without_video_ts = cjson.null}
for _, id in ipairs(ids) do
  local moved = lq_transition(id, 'waiting', from, nil, cleared)
  if moved[1] == 'ok' then
    local owner = cjson.decode(moved[3]).owner
    lq_queue_front(lq_wait_queue_key(owner), KEYS[11], KEYS[12], KEYS[13], id, owner)
    table.insert(rerouted, id)
  end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
return rerouted
"""


class AccountBusy(Exception):
    """The account has generations in flight; nothing was changed."""

    def __init__(self, in_flight: int) -> None:
        super().__init__(in_flight)
        self.in_flight = in_flight


class NoSuchAccount(Exception):
    """No account by that name; nothing was changed."""


class QueueFull(Exception):
    """The wait queue is at its bound; nothing was stored. A slot frees in about `retry_after` s."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(limit, retry_after)
        self.limit = limit
        self.retry_after = retry_after


class HolderQueueFull(QueueFull):
    """The key holder has as many generations waiting as it may; nothing was stored."""


class RateLimited(Exception):
    """The key holder made its creates per minute already; nothing was stored."""

    def __init__(self, limit: int, retry_after_seconds: float) -> None:
        super().__init__(limit, retry_after_seconds)
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds


class NoAccount(Exception):
    """No account can take new work (every one expired, spent or disabled); nothing was stored.

    `retry_after`: seconds until a spent account's capacity is read again, if any is spent."""

    def __init__(self, retry_after: int | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before with another request; nothing was stored."""


@dataclass(frozen=True)
class Place:
    """Where a waiting generation stands: its place in the pool's queue and the wait for a slot.

    `position` None: it left the queue a moment ago (a worker claimed it), so it waits no longer.
    `wait` None: no account can run anything now, so there is no honest estimate.
    """

    position: int | None
    wait: float | None


@dataclass(frozen=True)
class Enqueued:
    """What a create stored (or, for a repeated Idempotency-Key, what the first one stored)."""

    ids: list[str]
    batch_id: str | None
    replayed: bool
    places: dict[str, Place] = field(default_factory=dict)  # where the new ones stand
    depth: int | None = None  # the pool's queue depth after it, when this call stored it
    creates_left: int | None = None  # in the holder's current minute, when it has a rate limit
    creates_limit: int | None = None  # the holder's creates per minute, when it has one


@dataclass(frozen=True)
class HolderLimits:
    """A key holder's limits, as the defaults from settings would apply them."""

    max_queued: int
    creates_per_minute: int  # 0: no limit


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


class FinishedRecords:
    """Finished records kept in memory: no transition leaves a terminal phase (shared/states.py),
    so a completed or failed record is the same on every read until retention drops it. Bounded in
    entries (least recently read go first) and in age, so a record retention dropped is still
    answered for at most `seconds`."""

    def __init__(self, entries: int, seconds: float) -> None:
        self.entries = entries
        self.seconds = seconds
        self._kept: OrderedDict[str, tuple[float, GenerationRecord]] = OrderedDict()

    def get(self, gen_id: str) -> GenerationRecord | None:
        kept = self._kept.get(gen_id)
        if kept is None:
            return None
        until, record = kept
        if time.monotonic() > until:
            del self._kept[gen_id]
            return None
        self._kept.move_to_end(gen_id)
        return record

    def keep(self, record: GenerationRecord) -> None:
        if not record.terminal or not self.entries:
            return
        self._kept[record.id] = (time.monotonic() + self.seconds, record)
        self._kept.move_to_end(record.id)
        while len(self._kept) > self.entries:
            self._kept.popitem(last=False)


class GenerationStore:
    def __init__(
        self,
        redis: Redis,
        *,
        retention_seconds: int,
        default_generation_seconds: float,
        event_log_max_len: int = 1_000_000,
        holder_events_max_len: int = 10_000,
        finished: FinishedRecords | None = None,
    ) -> None:
        self.redis = redis
        # The api's reads of one generation (`get`) use it; writers and lists always read Redis.
        self.finished = finished
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
            "default_generation_seconds": repr(float(default_generation_seconds)),
            "accounts_key": json.dumps(keys.ACCOUNTS),
            "wait_owners_key": json.dumps(keys.WAIT_OWNERS),
            "wait_pin_key": json.dumps(keys.WAIT_PIN),
            "gen_seconds_key": json.dumps(keys.GEN_SECONDS),
            "account_key": _lua_key(keys.account, "name"),
            "leases_key": _lua_key(keys.leases, "name"),
            "wait_queue_key": _lua_key(keys.wait_queue, "owner"),
        }
        create = _CREATE % {"usage_lock_key": _lua_key(keys.usage_lock, "name")}
        self._create = redis.register_script(self.lua_library + create)
        self._places = redis.register_script(self.lua_library + _PLACES)
        self._transition = redis.register_script(self.lua_library + _TRANSITION)
        self._take_back = redis.register_script(self.lua_library + _TAKE_BACK)
        self._remove_account = redis.register_script(self.lua_library + _REMOVE_ACCOUNT)

    # --- writes ---------------------------------------------------------------------------------

    async def enqueue_new(self, record: GenerationRecord, *, max_depth: int) -> int:
        """Store a new generation and put it at the back of its owner's queue; returns the depth."""
        enqueued = await self.enqueue_many([record], max_depth=max_depth, limits=HolderLimits(max_depth, 0))
        return enqueued.depth or 0

    async def enqueue_many(
        self,
        records: list[GenerationRecord],
        *,
        max_depth: int,
        limits: HolderLimits,
        idempotency: tuple[str, str] | None = None,
        idempotency_ttl: int = 86400,
    ) -> Enqueued:
        """Store generations of one owner, in order, at the back of its queue: all or none.

        `idempotency`: (the caller's Idempotency-Key, a hash of its request). A key seen before
        with the same hash answers what it stored then; with another hash, IdempotencyKeyReused.
        Raises NoAccount, QueueFull, HolderQueueFull or RateLimited, having stored nothing. One
        round trip, whatever it answers.
        """
        owner = records[0].owner
        batch_id = records[0].batch_id
        args: list[str | int] = [
            max_depth,
            owner,
            limits.max_queued,
            limits.creates_per_minute,
            idempotency[1] if idempotency else "",
            idempotency_ttl,
            batch_id or "",
        ]
        for record in records:
            if record.owner != owner or record.phase is not Phase.WAITING or record.batch_id != batch_id:
                raise ValueError("enqueue_many takes new generations of one owner and one batch")
            images = [keys.upload_account(url) if url else "" for url in (record.image, record.image_end)]
            args += [record.model_dump_json(), _index_score(record.created_ts), *images]
        answer = await self._create(
            keys=[
                keys.WAIT_ALL,
                keys.WAIT_SEQ,
                keys.wait_queue(owner),
                keys.WAIT_PIN,
                keys.WAIT_TURN,
                keys.WAIT_OWNERS,
                keys.WAKE,
                keys.holder_limits(owner),
                keys.holder_creates(owner),
                keys.idempotency(owner, idempotency[0]) if idempotency else keys.idempotency(owner, ""),
                keys.START_DEADLINES,
            ],
            args=args,
        )
        outcome = str(answer[0])
        if outcome == "created":
            left = int(answer[2])
            ids = [record.id for record in records]
            return Enqueued(
                ids=ids,
                batch_id=batch_id,
                replayed=False,
                places=_places(ids, answer[4:]),
                depth=int(answer[1]),
                creates_left=None if left < 0 else left,
                creates_limit=None if left < 0 else int(answer[3]),
            )
        if outcome == "replay":
            return Enqueued(ids=[str(i) for i in answer[2:]], batch_id=str(answer[1]) or None, replayed=True)
        if outcome == "reused":
            raise IdempotencyKeyReused
        if outcome == "no_account":
            retry = int(answer[1])
            raise NoAccount(None if retry < 0 else retry)
        if outcome == "holder_full":
            raise HolderQueueFull(int(answer[1]), int(answer[2]))
        if outcome == "rate_limited":
            raise RateLimited(int(answer[1]), int(answer[2]) / 1000)
        raise QueueFull(int(answer[1]), int(answer[2]))

    async def places(self, records: list[GenerationRecord]) -> dict[str, Place]:
        """Where the waiting ones among `records` stand (one round trip, none if none waits)."""
        waiting = [record for record in records if record.phase is Phase.WAITING]
        if not waiting:
            return {}
        args = [value for record in waiting for value in (record.id, record.owner)]
        return _places([record.id for record in waiting], await self._places(args=args))

    async def holder_overrides(self, owners: list[str]) -> list[dict[str, int]]:
        """Each holder's limits as an operator set them (absent: the defaults apply)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.hgetall(keys.holder_limits(owner))
            rows = await pipe.execute()
        return [{name: int(value) for name, value in row.items()} for row in rows]

    async def set_holder_overrides(self, owner: str, changes: dict[str, int | None]) -> None:
        """Set (a number) or clear (None) an operator's limits for one holder."""
        key = keys.holder_limits(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, value in changes.items():
                if value is None:
                    pipe.hdel(key, name)
                else:
                    pipe.hset(key, name, str(value))
            await pipe.execute()

    async def holder_activity(self, owners: list[str]) -> list[tuple[int, int]]:
        """Per holder: generations waiting, and creates in the last minute (when it is rate limited)."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.zcard(keys.wait_queue(owner))
                pipe.zcount(keys.holder_creates(owner), now_ms - 60_000, "+inf")
            counts = await pipe.execute()
        return [(int(counts[2 * i]), int(counts[2 * i + 1])) for i in range(len(owners))]

    async def take_back(
        self,
        record: GenerationRecord,
        reason: FailureReason,
        message: str,
        *,
        expect: Iterable[Phase] = NOT_SUBMITTED,
    ) -> Transition:
        """End a generation `failed` before anything reached the upstream (waiting or claimed)."""
        answer = await self._take_back(
            keys=[keys.wait_queue(record.owner), keys.WAIT_ALL, keys.WAIT_PIN, keys.WAIT_OWNERS],
            args=[record.id, reason.value, message, time.time(), ",".join(phase.value for phase in expect)],
        )
        return _transition_result(record.id, Phase.FAILED, answer)

    async def cancel(self, record: GenerationRecord) -> Transition:
        """Its owner takes it back, if nothing has reached the upstream yet."""
        return await self.take_back(
            record, FailureReason.CANCELLED, "cancelled by its owner before it reached the upstream"
        )

    async def remove_account(self, name: str, *, force: bool = False) -> list[str]:
        """Take account `name` out of the pool; the ids of the generations sent back to waiting.

        Raises NoSuchAccount, or AccountBusy while it has generations in flight and not `force`.
        With `force`, those are rerouted: back to `waiting`, first in their owners' queues, to be
        created again on another account (one already created there is abandoned upstream).
        """
        answer = await self._remove_account(
            keys=[
                keys.ACCOUNTS,
                keys.account(name),
                keys.leases(name),
                keys.submitting(name),
                keys.running(name),
                keys.reserved_cost(name),
                keys.create_window(name),
                keys.poll_lock(name),
                keys.usage_lock(name),
                keys.heartbeat_lock(name),
                keys.WAIT_ALL,
                keys.WAIT_OWNERS,
                keys.WAIT_TURN,
            ],
            args=[name, "1" if force else "0"],
        )
        outcome = str(answer[0])
        if outcome == "missing":
            raise NoSuchAccount(name)
        if outcome == "busy":
            raise AccountBusy(int(answer[1]))
        await self.redis.lpush(keys.WAKE, "1")  # rerouted ones can start elsewhere now
        return [str(gen_id) for gen_id in answer[1:]]

    async def due_start_deadlines(self, now: float, count: int = 100) -> list[str]:
        """Generations whose start deadline has passed (dropped from the schedule as they are read)."""
        due = list(await self.redis.zrangebyscore(keys.START_DEADLINES, "-inf", int(now * 1000), 0, count))
        if due:
            await self.redis.zrem(keys.START_DEADLINES, *due)
        return due

    async def waiting_ids(self, count: int = 1000) -> list[str]:
        """The oldest waiting generations of the whole pool."""
        return list(await self.redis.zrange(keys.WAIT_ALL, 0, count - 1))

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
        return _transition_result(gen_id, to, answer)

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
        if self.finished is not None and (kept := self.finished.get(gen_id)) is not None:
            return kept
        raw = await self.redis.get(keys.generation(gen_id))
        if not raw:
            return None
        record = GenerationRecord.model_validate_json(raw)
        if self.finished is not None:
            self.finished.keep(record)
        return record

    async def get_owned(self, owner: str, gen_id: str) -> GenerationRecord | None:
        """A record only if it belongs to `owner`: another holder's id reads as unknown."""
        record = await self.get(gen_id)
        return record if record is not None and record.owner == owner else None

    async def get_many(self, gen_ids: list[str]) -> list[GenerationRecord]:
        if not gen_ids:
            return []
        raws = await self.redis.mget([keys.generation(gen_id) for gen_id in gen_ids])
        return [GenerationRecord.model_validate_json(raw) for raw in raws if raw]

    async def list_owned(
        self,
        owner: str,
        offset: int,
        limit: int,
        *,
        states: Iterable[State] | None = None,
        batch_id: str | None = None,
    ) -> list[GenerationRecord]:
        """Newest first, from the owner's sorted indexes: the cost grows with `limit`, not history.

        `states` and `batch_id` pick the index kept for exactly those (one per public state, per
        batch, per batch and state); several states are merged by creation time, which costs
        (offset + limit) per state.
        """
        chosen = sorted(set(states)) if states is not None else None
        if chosen is None:
            index = [keys.batch_index(owner, batch_id) if batch_id else keys.owner_index(owner)]
        elif batch_id:
            index = [keys.batch_state_index(owner, batch_id, state) for state in chosen]
        else:
            index = [keys.owner_state_index(owner, state) for state in chosen]
        if len(index) == 1:
            gen_ids = list(await self.redis.zrevrange(index[0], offset, offset + limit - 1))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in index:
                    pipe.zrevrange(key, 0, offset + limit - 1, withscores=True)
                pages = await pipe.execute()
            merged = heapq.merge(*pages, key=lambda item: -item[1])
            gen_ids = [gen_id for gen_id, _ in merged][offset : offset + limit]
        return await self.get_many(gen_ids)

    async def get_owned_many(self, owner: str, gen_ids: list[str]) -> list[GenerationRecord]:
        """The owner's records among `gen_ids`, newest first; unknown and foreign ids are absent."""
        found = [
            record for record in await self.get_many(list(dict.fromkeys(gen_ids))) if record.owner == owner
        ]
        return sorted(found, key=lambda record: record.created_ts, reverse=True)

    async def generation_seconds(self) -> float:
        measured = await self.redis.get(keys.GEN_SECONDS)
        return float(measured) if measured else self.default_generation_seconds

    async def record_generation_seconds(self, seconds: float, weight: float = 0.2) -> None:
        """Fold one measured run into the moving average behind every estimate."""
        previous = await self.redis.get(keys.GEN_SECONDS)
        value = seconds if previous is None else (1 - weight) * float(previous) + weight * seconds
        await self.redis.set(keys.GEN_SECONDS, f"{value:.3f}")


def _index_score(created_ts: float) -> str:
    """Milliseconds with a microsecond fraction, written from whole microseconds: two creates in
    the same millisecond (a batch's items are a microsecond apart) must still list newest first,
    not in the random order of their ids, and float rounding must not make two of them equal."""
    micros = round(created_ts * 1_000_000)
    return f"{micros // 1000}.{micros % 1000:03d}"


def _places(ids: list[str], answer: list[Any]) -> dict[str, Place]:
    """The Lua's flat (place, wait) pairs as Places; waits to a tenth of a second."""
    places = {}
    for index, gen_id in enumerate(ids):
        position, wait = int(answer[2 * index]), float(answer[2 * index + 1])
        places[gen_id] = Place(
            position=position or None,
            wait=None if wait < 0 else round(wait, 1) if position else 0.0,
        )
    return places


def _transition_result(gen_id: str, to: Phase, answer: list[Any]) -> Transition:
    outcome, previous, raw = (str(part) for part in answer)
    result = Transition(
        outcome=Outcome(outcome),
        previous=Phase(previous) if previous else None,
        record=GenerationRecord.model_validate_json(raw) if raw else None,
    )
    if result.outcome is Outcome.ILLEGAL:
        log.warning("transition_refused", generation_id=gen_id, current=previous, to=to.value)
    return result


def generation_store(redis: Redis, settings: Settings, *, keep_finished: bool = False) -> GenerationStore:
    """The store as a process's settings configure it; `keep_finished`: the api's, which keeps
    finished records in memory (FINISHED_CACHE_ENTRIES)."""
    finished = None
    if keep_finished and settings.finished_cache_entries:
        finished = FinishedRecords(settings.finished_cache_entries, settings.finished_cache_seconds)
    return GenerationStore(
        redis,
        retention_seconds=settings.record_retention_seconds,
        default_generation_seconds=settings.default_generation_seconds,
        event_log_max_len=settings.event_log_max_len,
        holder_events_max_len=settings.holder_events_max_len,
        finished=finished,
    )


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal (JSON's escapes are a subset of Lua's for what we emit)."""
    return json.dumps(text)


def views(records: list[GenerationRecord], places: dict[str, Place]) -> list[dict[str, Any]]:
    """Caller-facing views; waiting ones with their place in the queue and an honest wait."""
    shown = []
    for record in records:
        place = places.get(record.id)
        if record.phase is Phase.WAITING and place is None:
            # Read as waiting, yet no longer in the queue: a worker claimed it a moment ago.
            place = Place(position=None, wait=0.0)
        if place is None:
            shown.append(record.view())
        else:
            shown.append(record.view(queue_position=place.position, estimate_wait_seconds=place.wait))
    return shown
