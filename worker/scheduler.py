"""Slots, capacity and the fair queue, kept consistent across every worker by Lua in Redis.

A generation takes a slot (a lease in `account:{name}:leases`) and a unit of the account's
capacity in one atomic step, the claim, so two workers can never both pass the same check. Each
claim serves the owner whose turn is oldest (round-robin between key holders) and, within an
owner, the oldest waiting generation (FIFO).

Key names are passed in from shared/keys.py as templates, so the schema stays on one screen.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.store import GenerationStore
from worker.upstream.models import UpstreamUsage

_TEMPLATES = [
    keys.account("{}"),
    keys.leases("{}"),
    keys.submitting("{}"),
    keys.wait_queue("{}"),
    keys.reserved_cost("{}"),
    keys.create_window("{}"),
]

_PRELUDE = """
local function key(template, name) return (string.gsub(template, '{}', name)) end
local ACCOUNT, LEASES, SUBMITTING, WAITQ, COST, WINDOW = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
"""

# Claim the next waiting generation that some account can take now, and move it to `claimed`
# through the store's transition in the same step (a crash cannot leave one without the other).
# An account can take a generation when it is active and not resting, has a free slot, room in
# its creates-per-minute window (when it has one) and `available` for what the generation costs
# there: one generation on a web account, its price in cents on an official one. A generation
# that names a provider goes only to that kind; one that continues another (extend) only to the
# account that made the original.
# KEYS: accounts, wait:owners, wait:all, wait:pin, wait:turn, dispatch seq
# ARGV (after the templates): now ms, lease ms, a random number in [0, 1), window ms, the price
# of a record that has none.
# Returns {gen id, account, dispatch seq} or false when nothing can start.
_CLAIM = (
    _PRELUDE
    + """
local now, lease_ms, dice = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local window_ms, default_price = tonumber(ARGV[10]), tonumber(ARGV[11])
local names = redis.call('SMEMBERS', KEYS[1])
table.sort(names)
local free, usable, kinds, available, room = {}, {}, {}, {}, {}
for _, name in ipairs(names) do
  local h = redis.call('HMGET', key(ACCOUNT, name), 'state', 'max_concurrency', 'available', 'breaker_until',
    'kind', 'creates_per_minute')
  redis.call('ZREMRANGEBYSCORE', key(LEASES, name), '-inf', now)
  free[name] = tonumber(h[2] or '0') - redis.call('ZCARD', key(LEASES, name))
  available[name] = tonumber(h[3] or '')
  kinds[name] = h[5] or 'web'
  usable[name] = h[1] == 'active' and tonumber(h[4] or '0') <= now and available[name] ~= nil
  redis.call('ZREMRANGEBYSCORE', key(WINDOW, name), '-inf', now - window_ms)
  local per_minute = tonumber(h[6] or '')
  room[name] = per_minute and (per_minute - redis.call('ZCARD', key(WINDOW, name))) or 1
end
local function cost(name, rec)
  if kinds[name] == 'official' then return tonumber(rec.price_cents) or default_price end
  return 1
end
local function fits(name, rec)
  return usable[name] and free[name] > 0 and room[name] > 0 and available[name] >= cost(name, rec)
    and (not lq_present(rec.provider) or rec.provider == kinds[name])
end
local function best_account(rec)
  local best, ties = 0, {}
  for _, name in ipairs(names) do
    if fits(name, rec) then
      if free[name] > best then best, ties = free[name], {name}
      elseif free[name] == best then table.insert(ties, name) end
    end
  end
  if #ties == 0 then return nil end
  return ties[math.floor(dice * #ties) + 1]
end
local function leave_queue(queue, owner, head)
  redis.call('ZREM', queue, head)
  redis.call('ZREM', KEYS[3], head)
  redis.call('HDEL', KEYS[4], head)
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', KEYS[2], owner)
  else
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]), owner)
  end
end
local owners = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, owner in ipairs(owners) do
  local queue = key(WAITQ, owner)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then
      redis.call('ZREM', KEYS[2], owner)
      break
    end
    local rec = lq_read(head)
    local choice = nil
    if rec then
      local pin = redis.call('HGET', KEYS[4], head)
      if lq_present(rec.pin_account) then
        -- It continues a generation of that account: nowhere else can run it.
        if fits(rec.pin_account, rec) then choice = rec.pin_account end
      elseif pin and usable[pin] then
        -- A pinned generation waits for the account that holds its image while that account is
        -- healthy; if the account cannot serve at all, the image's public URL works anywhere.
        if fits(pin, rec) then choice = pin end
      else
        choice = best_account(rec)
      end
      if not choice then break end
    end
    local moved = {'missing'}
    local seq = 0
    if rec then
      seq = redis.call('INCR', KEYS[6])
      moved = lq_transition(head, 'claimed', {waiting = true}, nil,
        {account = choice, dispatch_seq = seq, started_ts = now / 1000})
    end
    leave_queue(queue, owner, head)
    if moved[1] == 'ok' then
      local units = cost(choice, rec)
      redis.call('ZADD', key(LEASES, choice), now + lease_ms, head)
      redis.call('SADD', key(SUBMITTING, choice), head)
      redis.call('HSET', key(COST, choice), head, units)
      redis.call('ZADD', key(WINDOW, choice), now, head)
      redis.call('PEXPIRE', key(WINDOW, choice), window_ms)
      -- `0 - units`, not `-units`: Lua writes a negated 0 as "-0", which HINCRBY refuses.
      redis.call('HINCRBY', key(ACCOUNT, choice), 'available', 0 - units)
      redis.call('HINCRBY', key(ACCOUNT, choice), 'consumed', units)
      redis.call('HINCRBY', key(ACCOUNT, choice), 'usage_seq', 1)
      return {head, choice, seq}
    end
    -- A stale entry (its record expired, or it is no longer waiting): dropped; try the next.
  end
end
return false
"""
)

# Hold (or re-take after a crash) the slot of one generation on one account.
# KEYS: leases, account; ARGV: gen id, now ms, expiry ms. Returns 1 when the slot is held.
_ENSURE_LEASE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[2], 'max_concurrency') or '0')
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# Give a slot back. KEYS: leases, submitting, running, account, wake, ..., reserved cost, rate
# window (the last two, whatever comes between). ARGV: gen id, 1 to give back what the claim
# reserved (no create was made: its capacity or price, and its place in the rate window).
_GIVE_BACK_SLOT = """
local function give_back_slot()
  local COST, WINDOW = KEYS[#KEYS - 1], KEYS[#KEYS]
  redis.call('ZREM', KEYS[1], ARGV[1])
  local was_submitting = redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  local units = tonumber(redis.call('HGET', COST, ARGV[1]) or '') or 1
  redis.call('HDEL', COST, ARGV[1])
  if was_submitting == 1 and ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[4], 'available', units)
    redis.call('HINCRBY', KEYS[4], 'consumed', 0 - units)
    redis.call('HINCRBY', KEYS[4], 'usage_seq', 1)
    redis.call('ZREM', WINDOW, ARGV[1])
  end
  redis.call('LPUSH', KEYS[5], '1')
  redis.call('LTRIM', KEYS[5], 0, 999)
  return was_submitting
end
"""
_RELEASE = _GIVE_BACK_SLOT + "return give_back_slot()"

# Make a claimed generation `waiting` again at the front of its owner's queue, through the
# store's transition, and give its slot back, in one step: a crash between the two would leave
# it in no queue at all. A record that a newer attempt owns (another fence) is left alone, slot
# included; one that can no longer wait (cancelled meanwhile) only gives its slot back.
# KEYS: the first five of _GIVE_BACK_SLOT, then wait queue, wait:all, wait:owners, wait:turn,
# wait:pin, then its last two.
# ARGV: the two of _GIVE_BACK_SLOT, then owner, pin account or '', fence or ''.
# Returns 1 requeued, 0 slot given back only, -1 nothing done (fenced).
_REQUEUE_FRONT = (
    _GIVE_BACK_SLOT
    + """
local fence = ARGV[5] ~= '' and ARGV[5] or nil
local moved = lq_transition(ARGV[1], 'waiting', {claimed = true, submitting = true}, fence,
  {account = cjson.null, fence = cjson.null, intent_at = cjson.null})
if moved[1] == 'fenced' then return -1 end
give_back_slot()
if moved[1] ~= 'ok' then return 0 end
lq_queue_front(KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[10], ARGV[1], ARGV[4]) end
return 1
"""
)

# A created generation joins the account's polled set; what its claim reserved is now the
# upstream's to count. KEYS: submitting, running, leases, account, poll lock, reserved cost;
# ARGV: gen id, upstream created ms, lease expiry ms, ms until it may end.
_MARK_RUNNING = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'usage_seq', 1)
-- The poll lock's lifetime is the wait until the account's next poll. A poll that found nothing
-- left running schedules the next one far off; pull it in to when this generation may end.
-- (No lock means a poll is due now anyway: creating one here could only delay it.)
if redis.call('PTTL', KEYS[5]) > tonumber(ARGV[4]) then
  redis.call('SET', KEYS[5], 'new-run', 'PX', ARGV[4])
end
return 1
"""

# Record a fresh usage reading unless a claim or release changed the account meanwhile.
# KEYS: account, submitting, reserved cost; ARGV: usage_seq seen before the call, available,
# capacity ('' if none), consumed ('' if none), usage JSON. Claimed-but-not-created generations
# are not in the upstream's count yet, so what their claims reserved (a generation each on a web
# account, a price on an official one) stays out of `available` and in `consumed`.
_USAGE = """
local seq = redis.call('HGET', KEYS[1], 'usage_seq') or '0'
if seq ~= ARGV[1] then return 0 end
local reserved = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  reserved = reserved + (tonumber(redis.call('HGET', KEYS[3], id) or '') or 1)
end
redis.call('HSET', KEYS[1], 'available', tonumber(ARGV[2]) - reserved, 'capacity', ARGV[3], 'usage', ARGV[5])
local consumed = tonumber(ARGV[4])
if consumed then
  redis.call('HSET', KEYS[1], 'consumed', consumed + reserved)
else
  -- No count upstream (an official balance): the claims' own counter stays a number.
  redis.call('HDEL', KEYS[1], 'consumed')
end
return 1
"""

# The create is being sent now: its place in the rate window moves to this moment, so that
# the window counts creates as the upstream sees them arrive (a claim can be sent late).
# KEYS: rate window; ARGV: gen id, now ms, window ms.
_SENDING = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# The upstream's own minute: a little longer here, so a create sent a moment after its
# claim still finds the upstream's window as full as ours.
WINDOW_SECONDS = 62.0


@dataclass(frozen=True)
class Claim:
    gen_id: str
    account: str
    dispatch_seq: int


class Scheduler:
    def __init__(
        self,
        redis: Redis,
        *,
        lease_seconds: float,
        store: GenerationStore,
        default_price_cents: int = 0,
        window_seconds: float = WINDOW_SECONDS,
    ) -> None:
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        # What an official create costs when its record says nothing (records of older versions).
        self.default_price_cents = default_price_cents
        self.window_ms = int(window_seconds * 1000)
        # The claim and the requeue move a generation's phase: they run the store's transition.
        self._claim = redis.register_script(store.lua_library + _CLAIM)
        self._ensure = redis.register_script(_ENSURE_LEASE)
        self._release = redis.register_script(_RELEASE)
        self._requeue = redis.register_script(store.lua_library + _REQUEUE_FRONT)
        self._usage = redis.register_script(_USAGE)
        self._mark_running = redis.register_script(_MARK_RUNNING)
        self._sending = redis.register_script(_SENDING)

    async def claim(self) -> Claim | None:
        answer = await self._claim(
            keys=[
                keys.ACCOUNTS,
                keys.WAIT_OWNERS,
                keys.WAIT_ALL,
                keys.WAIT_PIN,
                keys.WAIT_TURN,
                keys.DISPATCH_SEQ,
            ],
            args=[
                *_TEMPLATES,
                _now_ms(),
                self.lease_ms,
                random.random(),
                self.window_ms,
                self.default_price_cents,
            ],
        )
        if not answer:
            return None
        gen_id, account, seq = answer
        return Claim(gen_id=str(gen_id), account=str(account), dispatch_seq=int(seq))

    async def ensure_lease(self, gen_id: str, account: str, hold_seconds: float | None = None) -> bool:
        """Hold the generation's slot until now + hold_seconds (default: one lease period)."""
        now = _now_ms()
        expiry = now + (int(hold_seconds * 1000) if hold_seconds is not None else self.lease_ms)
        held = await self._ensure(
            keys=[keys.leases(account), keys.account(account)], args=[gen_id, now, expiry]
        )
        return bool(held)

    async def renew(self, account: str, gen_ids: list[str]) -> None:
        """Keep the slots of generations still in flight; re-take them after a full outage."""
        if gen_ids:
            expiry = _now_ms() + self.lease_ms
            await self.redis.zadd(keys.leases(account), dict.fromkeys(gen_ids, expiry))

    async def release(self, gen_id: str, account: str, *, restore_capacity: bool) -> None:
        await self._release(
            keys=[*self._slot_keys(account), *self._reservation_keys(account)],
            args=[gen_id, "1" if restore_capacity else "0"],
        )

    @staticmethod
    def _slot_keys(account: str) -> list[str]:
        return [
            keys.leases(account),
            keys.submitting(account),
            keys.running(account),
            keys.account(account),
            keys.WAKE,
        ]

    @staticmethod
    def _reservation_keys(account: str) -> list[str]:
        return [keys.reserved_cost(account), keys.create_window(account)]

    @staticmethod
    def _queue_keys(owner: str) -> list[str]:
        return [keys.wait_queue(owner), keys.WAIT_ALL, keys.WAIT_OWNERS, keys.WAIT_TURN, keys.WAIT_PIN]

    async def drop_lease(self, gen_id: str, account: str) -> None:
        """Free the slot only; the generation stays claimed and its job takes a slot again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.leases(account), gen_id)
            pipe.lpush(keys.WAKE, "1")
            await pipe.execute()

    async def requeue_front(
        self,
        gen_id: str,
        owner: str,
        account: str,
        *,
        pin: str | None,
        restore_capacity: bool,
        fence: int | None = None,
    ) -> bool:
        """Release the slot taken on `account` and make the generation its owner's next one.

        False: the record could not go back to waiting: cancelled meanwhile (only the slot was
        given back), or `fence` is no longer its intent's (nothing was touched).
        """
        moved = await self._requeue(
            keys=[*self._slot_keys(account), *self._queue_keys(owner), *self._reservation_keys(account)],
            args=[gen_id, "1" if restore_capacity else "0", owner, pin or "", "" if fence is None else fence],
        )
        return int(moved) == 1

    async def mark_running(
        self, gen_id: str, account: str, submitted_ts: float, first_poll_in: float
    ) -> None:
        """The create is recorded: poll it from now on; its capacity is now the upstream's count."""
        await self._mark_running(
            keys=[
                keys.submitting(account),
                keys.running(account),
                keys.leases(account),
                keys.account(account),
                keys.poll_lock(account),
                keys.reserved_cost(account),
            ],
            args=[
                gen_id,
                int(submitted_ts * 1000),
                _now_ms() + self.lease_ms,
                max(1, int(first_poll_in * 1000)),
            ],
        )

    async def usage_seq(self, account: str) -> str:
        return str(await self.redis.hget(keys.account(account), "usage_seq") or "0")

    async def store_usage(self, account: str, seen_seq: str, usage: UpstreamUsage) -> bool:
        saved = await self._usage(
            keys=[keys.account(account), keys.submitting(account), keys.reserved_cost(account)],
            args=[
                seen_seq,
                usage.available,
                "" if usage.capacity is None else usage.capacity,
                "" if usage.consumed is None else usage.consumed,
                json.dumps(usage.raw),
            ],
        )
        return bool(saved)

    async def sending(self, gen_id: str, account: str) -> None:
        """The paid create leaves now: count it in the account's rate window from this moment."""
        await self._sending(keys=[keys.create_window(account)], args=[gen_id, _now_ms(), self.window_ms])

    async def wait_for_wake(self, seconds: float) -> None:
        """Sleep until new work or a freed slot is announced, or `seconds` pass."""
        await self.redis.blpop([keys.WAKE], timeout=seconds)  # type: ignore[arg-type]

    async def wake(self) -> None:
        await self.redis.lpush(keys.WAKE, "1")


def _now_ms() -> int:
    return int(time.time() * 1000)
