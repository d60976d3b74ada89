"""Webhook state in Redis: each key holder's signing secret, and each event's delivery and attempts.

A delivery is made from one entry of the event log (worker/webhooks.py reads the log and sends
them); this module is the only code that writes the keys of the "Webhooks" block of shared/keys.py,
and what the api reads for /api/webhooks/secret and /api/generations/{id}/deliveries.

A generation's deliveries wait in its own queue, in the log's order, and only the head of that
queue is ever attempted: so a `generation.completed` is never sent before that generation's
`generation.processing` has been delivered or given up. Which generations have a head due, and
when, is one sorted set; a sender takes a generation from it with a lease (its due time pushed
past the attempt's timeout), so a sender that dies is replaced once the lease has run out, and
a late answer from a replaced sender is kept as an attempt but moves nothing (its lease token is
no longer the delivery's).
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from shared import keys
from shared.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

WebhookType = Literal["generation.processing", "generation.completed", "generation.failed"]
DeliveryState = Literal["pending", "delivered", "given_up"]
AttemptOutcome = Literal["delivered", "failed", "given_up"]

_HOLE = "\x00"


def _key_parts(template: Any) -> tuple[str, str]:
    """The text before and after the id in a one-argument key, so Lua can build such keys."""
    before, after = template(_HOLE).split(_HOLE)
    return before, after


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells one: `whsec_` and base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_id(entry_id: str) -> str:
    """An event's webhook-id: the log entry it came from, so every retry of it carries the same one."""
    return f"msg_{entry_id}"


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Delivery(BaseModel):
    """One event on its way to one callback_url, as its hash holds it."""

    webhook_id: str
    generation_id: str
    owner: str
    type: WebhookType
    timestamp: str  # the event's time, ISO-8601 UTC: the body's `timestamp`
    url: str = Field(repr=False)  # may carry a receiver's token in its query
    body: str = Field(repr=False)  # the exact bytes signed and sent, the same on every attempt
    state: DeliveryState = "pending"
    attempts: int = 0  # attempts made, over every round (a redelivery starts a new round)
    tries: int = 0  # failed attempts in this round: the step of the retry schedule reached
    lease: int = 0  # bumped by every take and every redelivery; an attempt records only under its own
    next_at: int | None = None  # ms: when a pending one is next due
    reason: str | None = None  # why it was given up


class Attempt(BaseModel):
    """One attempt to deliver one event, as /deliveries shows it (times in ms here)."""

    webhook_id: str
    type: WebhookType
    attempt: int
    at: int
    status: int | None = None  # the receiver's HTTP status, when it answered
    error: str | None = None  # why there was no answer: refused, timed out, not allowed
    outcome: AttemptOutcome
    next_attempt_at: int | None = None
    superseded: bool = False  # made under a lease that had run out: recorded, changed nothing


class Taken(BaseModel):
    """A generation whose queue head a sender now holds, under `lease`."""

    generation_id: str
    webhook_id: str
    lease: int


class Recorded(BaseModel):
    """What recording an attempt did; `missing`: the delivery is gone (dropped by retention)."""

    outcome: AttemptOutcome | Literal["missing"]
    attempt: int
    next_at: int | None
    superseded: bool


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: delivery, the generation's deliveries, its queue, due. ARGV: gen id, webhook id, ttl ms,
# then the delivery's fields and values. Idempotent: the reader may see an entry twice after a crash.
_ENQUEUE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', 0, 'tries', 0, 'lease', 0,
  'next_at', now, unpack(ARGV, 4))
redis.call('RPUSH', KEYS[2], ARGV[2])
if redis.call('RPUSH', KEYS[3], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[4], now, ARGV[1])
else
  -- Earlier events are ahead of it: the generation's due time belongs to its head.
  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[1])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""
)

# KEYS: due. ARGV: lease ms, how many, queue key's prefix and suffix, delivery key's prefix.
# Returns gen id, head webhook id, lease token, for each generation taken.
_TAKE = (
    _NOW
    + """
local lease_ms, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local taken = {}
for _, gen in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, count)) do
  local queue = ARGV[3] .. gen .. ARGV[4]
  local head = redis.call('LINDEX', queue, 0)
  -- A delivery that retention dropped while it still waited has nothing left to send.
  while head and redis.call('EXISTS', ARGV[5] .. head) == 0 do
    redis.call('LPOP', queue)
    head = redis.call('LINDEX', queue, 0)
  end
  if head then
    redis.call('ZADD', KEYS[1], now + lease_ms, gen)
    local lease = redis.call('HINCRBY', ARGV[5] .. head, 'lease', 1)
    table.insert(taken, gen)
    table.insert(taken, head)
    table.insert(taken, tostring(lease))
  else
    redis.call('ZREM', KEYS[1], gen)
  end
end
return taken
"""
)

# KEYS: delivery, queue, due, attempts. ARGV: gen id, webhook id, lease, delivered (1/0), HTTP
# status ('' for none), error ('' for none), reason for a give-up, sent at ms, schedule (JSON
# list of seconds), ttl ms. Returns the outcome, the attempt's number and the next due time.
_RECORD = (
    _NOW
    + """
local delivery, queue, due, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local gen, wid = ARGV[1], ARGV[2]
if redis.call('EXISTS', delivery) == 0 then return {'missing', '0', '', '0'} end
local delivered = ARGV[4] == '1'
local number = redis.call('HINCRBY', delivery, 'attempts', 1)
local row = {webhook_id = wid, type = redis.call('HGET', delivery, 'type'), attempt = number,
  at = tonumber(ARGV[8]), status = ARGV[5] ~= '' and tonumber(ARGV[5]) or cjson.null,
  error = ARGV[6] ~= '' and ARGV[6] or cjson.null, next_attempt_at = cjson.null}
local next_at = ''

local function advance()
  redis.call('LPOP', queue)
  if redis.call('LLEN', queue) > 0 then
    redis.call('ZADD', due, now, gen)
  else
    redis.call('ZREM', due, gen)
  end
end

if redis.call('HGET', delivery, 'lease') ~= ARGV[3] or redis.call('LINDEX', queue, 0) ~= wid then
  -- Our lease ran out and another sender took over, or the admin redelivered meanwhile: the
  -- receiver did get this attempt, so it is shown, but the delivery is the newer holder's now.
  row.outcome = delivered and 'delivered' or 'failed'
  row.superseded = true
elseif delivered then
  redis.call('HSET', delivery, 'state', 'delivered', 'next_at', '')
  advance()
  row.outcome = 'delivered'
else
  local tries = redis.call('HINCRBY', delivery, 'tries', 1)
  local schedule = cjson.decode(ARGV[9])
  if tries <= #schedule then
    local at = now + math.floor(schedule[tries] * 1000)
    next_at = string.format('%d', at)
    redis.call('HSET', delivery, 'next_at', next_at)
    redis.call('ZADD', due, at, gen)
    row.next_attempt_at = at
    row.outcome = 'failed'
  else
    redis.call('HSET', delivery, 'state', 'given_up', 'next_at', '', 'reason', ARGV[7])
    advance()
    row.outcome = 'given_up'
  end
end
redis.call('RPUSH', attempts, cjson.encode(row))
local ttl = tonumber(ARGV[10])
for _, key in ipairs({delivery, queue, attempts}) do redis.call('PEXPIRE', key, ttl) end
return {row.outcome, tostring(number), next_at, row.superseded and '1' or '0'}
"""
)

# KEYS: the generation's deliveries, its queue, due. ARGV: gen id, delivery key's prefix, ttl ms.
# Every event of the generation goes back in its queue, in order, with a fresh schedule.
_REDELIVER = (
    _NOW
    + """
local count = 0
redis.call('DEL', KEYS[2])
for _, wid in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local delivery = ARGV[2] .. wid
  if redis.call('EXISTS', delivery) == 1 then
    redis.call('HSET', delivery, 'state', 'pending', 'tries', 0, 'reason', '', 'next_at', now)
    -- An attempt in flight right now belongs to the round before; it must not pop this one.
    redis.call('HINCRBY', delivery, 'lease', 1)
    redis.call('RPUSH', KEYS[2], wid)
    count = count + 1
  end
end
if count > 0 then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return count
"""
)


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None


def _delivery_from_hash(fields: dict[str, str]) -> Delivery:
    return Delivery.model_validate(
        {
            **fields,
            "next_at": _optional_int(fields.get("next_at")),
            "reason": fields.get("reason") or None,
        }
    )


class WebhookStore:
    """Secrets, deliveries and attempts; every change of a delivery is one Lua step."""

    def __init__(self, redis: Redis, *, retention_seconds: int) -> None:
        self.redis = redis
        self.ttl_ms = retention_seconds * 1000
        self._enqueue = redis.register_script(_ENQUEUE)
        self._take = redis.register_script(_TAKE)
        self._record = redis.register_script(_RECORD)
        self._redeliver = redis.register_script(_REDELIVER)
        self._queue_parts = _key_parts(keys.webhook_queue)
        self._delivery_prefix, _ = _key_parts(keys.webhook_delivery)

    # --- secrets ------------------------------------------------------------------------------

    async def secret(self, owner: str) -> str:
        """The holder's signing secret, made on first read (by the api or by a sender)."""
        fresh = new_secret()
        existing = await self.redis.set(keys.webhook_secret(owner), fresh, nx=True, get=True)
        return str(existing) if existing else fresh

    async def rotate_secret(self, owner: str) -> str:
        """A new secret; every attempt signed from now on uses it."""
        fresh = new_secret()
        await self.redis.set(keys.webhook_secret(owner), fresh)
        return fresh

    # --- deliveries ---------------------------------------------------------------------------

    async def enqueue(self, delivery: Delivery) -> bool:
        """Queue a new delivery behind its generation's earlier ones; False if it was already queued."""
        fields = delivery.model_dump(
            include={"webhook_id", "generation_id", "owner", "type", "timestamp", "url", "body"}
        )
        flat = [item for pair in fields.items() for item in pair]
        added = await self._enqueue(
            keys=[
                keys.webhook_delivery(delivery.webhook_id),
                keys.webhook_deliveries(delivery.generation_id),
                keys.webhook_queue(delivery.generation_id),
                keys.WEBHOOK_DUE,
            ],
            args=[delivery.generation_id, delivery.webhook_id, self.ttl_ms, *flat],
        )
        return bool(added)

    async def take_due(self, *, lease_seconds: float, count: int) -> list[Taken]:
        """Up to `count` generations whose head is due, each held for `lease_seconds`."""
        before, after = self._queue_parts
        flat = await self._take(
            keys=[keys.WEBHOOK_DUE],
            args=[int(lease_seconds * 1000), count, before, after, self._delivery_prefix],
        )
        return [
            Taken(generation_id=str(flat[i]), webhook_id=str(flat[i + 1]), lease=int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def delivery(self, wid: str) -> Delivery | None:
        fields = await self.redis.hgetall(keys.webhook_delivery(wid))
        return _delivery_from_hash(fields) if fields else None

    async def record_attempt(
        self,
        taken: Taken,
        *,
        sent_at_ms: int,
        status: int | None,
        error: str | None,
        schedule: list[float],
    ) -> Recorded:
        """Keep one attempt; a 2xx delivers it, anything else retries it on `schedule` or gives up."""
        delivered = status is not None and 200 <= status < 300
        reason = error if error else f"HTTP {status}"
        answer = await self._record(
            keys=[
                keys.webhook_delivery(taken.webhook_id),
                keys.webhook_queue(taken.generation_id),
                keys.WEBHOOK_DUE,
                keys.webhook_attempts(taken.generation_id),
            ],
            args=[
                taken.generation_id,
                taken.webhook_id,
                taken.lease,
                "1" if delivered else "0",
                "" if status is None else status,
                error or "",
                reason,
                sent_at_ms,
                json.dumps(schedule),
                self.ttl_ms,
            ],
        )
        outcome, number, next_at, superseded = (str(part) for part in answer)
        return Recorded.model_validate(
            {
                "outcome": outcome,
                "attempt": int(number),
                "next_at": _optional_int(next_at),
                "superseded": superseded == "1",
            }
        )

    async def redeliver(self, gen_id: str) -> int:
        """Send every event of the generation again, in order, from the schedule's start."""
        count = await self._redeliver(
            keys=[keys.webhook_deliveries(gen_id), keys.webhook_queue(gen_id), keys.WEBHOOK_DUE],
            args=[gen_id, self._delivery_prefix, self.ttl_ms],
        )
        return int(count)

    async def seconds_until_due(self, now_ms: int) -> float | None:
        """How long until the earliest generation is due, by the caller's clock; None: nothing queued."""
        first = await self.redis.zrange(keys.WEBHOOK_DUE, 0, 0, withscores=True)
        if not first:
            return None
        return max(0.0, (float(first[0][1]) - now_ms) / 1000)

    # --- reads --------------------------------------------------------------------------------

    async def deliveries(self, gen_id: str) -> list[tuple[Delivery, list[Attempt]]]:
        """Every delivery of one generation in the log's order, each with its attempts, oldest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.webhook_deliveries(gen_id), 0, -1)
            pipe.lrange(keys.webhook_attempts(gen_id), 0, -1)
            wids, raw_attempts = await pipe.execute()
        if not wids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in wids:
                pipe.hgetall(keys.webhook_delivery(wid))
            hashes = await pipe.execute()
        attempts: dict[str, list[Attempt]] = {}
        for raw in raw_attempts:
            attempt = Attempt.model_validate_json(raw)
            attempts.setdefault(attempt.webhook_id, []).append(attempt)
        return [
            (_delivery_from_hash(fields), attempts.get(str(wid), []))
            for wid, fields in zip(wids, hashes, strict=True)
            if fields
        ]


def delivery_view(delivery: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    """One event's delivery as GET /api/generations/{id}/deliveries shows it (never its body)."""
    return {
        "webhook_id": delivery.webhook_id,
        "type": delivery.type,
        "timestamp": delivery.timestamp,
        "state": delivery.state,
        "next_attempt_at": iso_ms(delivery.next_at) if delivery.state == "pending" else None,
        "given_up_reason": delivery.reason,
        "attempts": [
            {
                "attempt": attempt.attempt,
                "at": iso_ms(attempt.at),
                "status": attempt.status,
                "error": attempt.error,
                "outcome": attempt.outcome,
                "next_attempt_at": iso_ms(attempt.next_attempt_at),
                "superseded": attempt.superseded,
            }
            for attempt in attempts
        ],
    }


def webhook_store(redis: Redis, settings: Settings) -> WebhookStore:
    """The webhook store as a process's settings configure it."""
    return WebhookStore(redis, retention_seconds=settings.record_retention_seconds)
