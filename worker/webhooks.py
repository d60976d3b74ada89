"""Webhook delivery: one reader turns the event log into deliveries, every worker's sender sends them.

The reader is a consumer of the event log (shared/events.py), never a hook in the code that
changes state: a transition and its log entry are one Lua step, and the consumer group `webhooks`
keeps the cursor, so an entry appended before a crash is still read after it. Only one worker
reads at a time (a lock in Redis, renewed while held), always as the same consumer, so a new
holder's first read from `0` takes back whatever a dead holder read and never acknowledged, and
entries become deliveries in the log's order: that order is what makes "events of one generation
arrive in order" hold. Turning an entry into a delivery is idempotent (shared/webhooks.py), so an
entry read twice is queued once.

Every worker runs a sender: it takes generations whose queue head is due (with a lease, so a
sender that dies is replaced), sends that head signed as Standard Webhooks says
(standardwebhooks.com), and records the attempt: a 2xx delivers it; anything else (another status,
a refused connection, a timeout, a redirect: redirects are not followed) retries it on
WEBHOOK_RETRY_SCHEDULE and then gives it up with the reason kept.

Where a request may go: unless WEBHOOK_ALLOW_PRIVATE_NETWORKS, the session connects only to
addresses shared/netguard.py calls public, checked on the address actually connected to (the
resolver) and, for IP-literal hosts that aiohttp never resolves, before connecting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import time
import uuid

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from yarl import URL

from shared import keys
from shared.events import Event, GenerationEvent, parse_entry
from shared.netguard import PublicOnlyResolver, connect_allowed
from shared.settings import EVENT_LOG_BLOCK_SECONDS, Settings
from shared.states import State
from shared.webhooks import (
    SECRET_PREFIX,
    Delivery,
    Recorded,
    Taken,
    WebhookStore,
    WebhookType,
    webhook_id,
    webhook_store,
)
from worker.context import Deps
from worker.loops import run_loop
from worker.metrics import WEBHOOK_DELIVERIES

log = structlog.get_logger(__name__)

# The reader's lock outlives a dead holder by at most this long; the holder renews it every step,
# and a step blocks on the log for at most READ_BLOCK_MS.
READER_LOCK_SECONDS = 5.0
READ_BLOCK_MS = round(EVENT_LOG_BLOCK_SECONDS * 1000)  # within the socket timeout (settings check)
READ_BATCH = 200
# A taken delivery is handed to another sender if no attempt was recorded within the attempt's
# timeout plus this margin (signing, Redis round trips, a busy event loop).
LEASE_MARGIN_SECONDS = 5.0
# Attempts one worker has in flight at once; one slow receiver must not hold up the others.
SENDER_CONCURRENCY = 20
# How long a sender with nothing due waits before looking again (new events are due at once).
SENDER_IDLE_SECONDS = 0.25
SENDER_MIN_PAUSE_SECONDS = 0.01
USER_AGENT = "luma-queue-webhooks/1"

WEBHOOK_TYPES: dict[State, WebhookType] = {
    "processing": "generation.processing",
    "completed": "generation.completed",
    "failed": "generation.failed",
}

# --------------------------------------------------------------------------------------------------
# Signing (Standard Webhooks: HMAC-SHA256 of "{id}.{timestamp}.{body}", key = base64 after whsec_)
# --------------------------------------------------------------------------------------------------


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one attempt: `v1,` and the base64 HMAC-SHA256."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


# --------------------------------------------------------------------------------------------------
# From a log entry to a delivery
# --------------------------------------------------------------------------------------------------


def delivery_for(event: Event) -> Delivery | None:
    """The webhook an event calls for, if any: a change of public state to processing, completed
    or failed, of a generation that has a callback_url (the log then carries its record)."""
    if not isinstance(event, GenerationEvent) or not event.state_changed:
        return None
    kind = WEBHOOK_TYPES.get(event.state)
    record = event.record()
    if kind is None or record is None or not record.callback_url:
        return None
    # `data` is the generation as GET /api/generations/{id} showed it right after the change.
    body = {"type": kind, "timestamp": event.at_iso, "data": record.view()}
    return Delivery(
        webhook_id=webhook_id(event.id),
        generation_id=event.generation_id,
        owner=event.owner,
        type=kind,
        timestamp=event.at_iso,
        url=record.callback_url,
        body=json.dumps(body, separators=(",", ":")),
    )


# The lock's one door: renew it if we hold it, take it if nobody does. 1: renewed, 2: taken, 0: held
# by another worker.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKEN = 2


class LogReader:
    """The one consumer of the log for webhooks, while this worker holds the reader's lock."""

    def __init__(self, redis: Redis, store: WebhookStore) -> None:
        self.redis = redis
        self.store = store
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # "0": what this consumer read and never acknowledged (a dead holder's, or our own after a
        # failed step); ">": entries nobody has read yet.
        self.cursor = "0"
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)

    async def step(self) -> float:
        held = int(await self._hold(keys=[keys.WEBHOOK_READER_LOCK], args=[self.holder, self._lock_ms]))
        if not held:
            self.cursor = "0"
            return READER_LOCK_SECONDS / 2
        if held == _TAKEN:
            await self._ensure_group()
            self.cursor = "0"
        try:
            entries = await self._read()
            if not entries and self.cursor == "0":
                self.cursor = ">"
                return 0.0
            await self._handle(entries)
        except BaseException:
            # What we read stays pending: read it again from "0" rather than skip it.
            self.cursor = "0"
            raise
        return 0.0

    async def release(self) -> None:
        await self._release(keys=[keys.WEBHOOK_READER_LOCK], args=[self.holder])

    @property
    def _lock_ms(self) -> int:
        return int(READER_LOCK_SECONDS * 1000)

    async def _ensure_group(self) -> None:
        # From the log's start: an event appended before the first worker ever ran still counts.
        try:
            await self.redis.xgroup_create(keys.EVENTS, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read(self) -> list[tuple[str, dict[str, str]]]:
        try:
            reply = await self.redis.xreadgroup(
                keys.WEBHOOK_GROUP,
                keys.WEBHOOK_GROUP,
                {keys.EVENTS: self.cursor},
                count=READ_BATCH,
                block=None if self.cursor == "0" else READ_BLOCK_MS,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # The group went away with the data (a flushed or replaced Redis): start it again.
            await self._ensure_group()
            self.cursor = "0"
            return []
        return list(reply[0][1]) if reply else []

    async def _handle(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        for entry_id, fields in entries:
            delivery = self._delivery(entry_id, fields)
            if delivery is not None and await self.store.enqueue(delivery):
                log.info(
                    "webhook_queued",
                    generation_id=delivery.generation_id,
                    webhook_id=delivery.webhook_id,
                    type=delivery.type,
                )
        if entries:
            await self.redis.xack(keys.EVENTS, keys.WEBHOOK_GROUP, *(entry_id for entry_id, _ in entries))

    @staticmethod
    def _delivery(entry_id: str, fields: dict[str, str]) -> Delivery | None:
        if not fields:
            return None  # trimmed from the log before anyone read it
        try:
            return delivery_for(parse_entry(entry_id, fields))
        except ValidationError:
            # An entry we cannot read must not stop every webhook behind it.
            log.error("webhook_unreadable_event", entry_id=entry_id)
            return None


# --------------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------------


def webhook_session(
    *, allow_private: bool, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The session webhooks go out on: no cookies kept, public addresses only unless allowed.

    `resolver` answers name lookups (aiohttp's default when None); without `allow_private` its
    answers pass through PublicOnlyResolver, so what is connected to is what was checked.
    """
    chosen = resolver if allow_private else PublicOnlyResolver(resolver)
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=SENDER_CONCURRENCY, resolver=chosen),
    )


async def post_webhook(
    session: aiohttp.ClientSession,
    delivery: Delivery,
    secret: str,
    *,
    timeout_seconds: float,
    allow_private: bool,
) -> tuple[int, int | None, str | None]:
    """One attempt: when it was sent (ms), the receiver's status, or why there was none."""
    sent_at = time.time()
    sent_at_ms = int(sent_at * 1000)
    refusal = connect_allowed(delivery.url, allow_private=allow_private)
    if refusal:
        return sent_at_ms, None, f"not connected: {refusal}, which the gateway must not connect to"
    body = delivery.body.encode()
    headers = signed_headers(secret, delivery.webhook_id, int(sent_at), body)
    try:
        async with session.post(
            delivery.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        ) as response:
            return sent_at_ms, response.status, None
    except TimeoutError:
        return sent_at_ms, None, f"no answer within {timeout_seconds:g} s"
    except aiohttp.ClientConnectorError as error:
        # Refused, unreachable, or (PublicOnlyResolver) resolving only to addresses we must not reach.
        cause = error.os_error.strerror or str(error.os_error)
        return sent_at_ms, None, f"could not connect to {error.host}:{error.port}: {cause}"
    except aiohttp.ClientError as error:
        return sent_at_ms, None, f"{type(error).__name__}: {error}"


class Sender:
    """Takes due deliveries, attempts each generation's head, records what happened."""

    def __init__(self, store: WebhookStore, session: aiohttp.ClientSession, settings: Settings) -> None:
        self.store = store
        self.session = session
        self.timeout = settings.webhook_timeout_seconds
        self.schedule = settings.webhook_retry_schedule
        self.allow_private = settings.webhook_allow_private_networks
        self.lease_seconds = self.timeout + LEASE_MARGIN_SECONDS
        self.in_flight: set[asyncio.Task[None]] = set()

    async def step(self) -> float:
        free = SENDER_CONCURRENCY - len(self.in_flight)
        if free <= 0:
            return SENDER_IDLE_SECONDS
        taken = await self.store.take_due(lease_seconds=self.lease_seconds, count=free)
        for item in taken:
            task = asyncio.create_task(self.attempt(item), name=f"webhook:{item.webhook_id}")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        if taken:
            return 0.0
        until = await self.store.seconds_until_due(int(time.time() * 1000))
        pause = SENDER_IDLE_SECONDS if until is None else min(until, SENDER_IDLE_SECONDS)
        return max(pause, SENDER_MIN_PAUSE_SECONDS)

    async def attempt(self, taken: Taken) -> None:
        try:
            delivery = await self.store.delivery(taken.webhook_id)
            if delivery is None:
                return  # dropped by retention; the next take skips it
            # The holder's secret as it is now: a rotation signs every later attempt.
            secret = await self.store.secret(delivery.owner)
            sent_at_ms, status, error = await post_webhook(
                self.session, delivery, secret, timeout_seconds=self.timeout, allow_private=self.allow_private
            )
            recorded = await self.store.record_attempt(
                taken, sent_at_ms=sent_at_ms, status=status, error=error, schedule=self.schedule
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing recorded: the lease runs out and a sender (this one, or another) tries again.
            log.exception(
                "webhook_attempt_crashed", generation_id=taken.generation_id, webhook_id=taken.webhook_id
            )
            return
        _log_outcome(delivery, recorded, status, error)

    async def close(self) -> None:
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)


def _log_outcome(delivery: Delivery, recorded: Recorded, status: int | None, error: str | None) -> None:
    if recorded.outcome == "missing":
        return
    WEBHOOK_DELIVERIES.labels(recorded.outcome).inc()
    # The host only: a URL's path or query may carry the receiver's own token.
    fields = {
        "generation_id": delivery.generation_id,
        "webhook_id": delivery.webhook_id,
        "type": delivery.type,
        "attempt": recorded.attempt,
        "host": URL(delivery.url).host,
        "status": status,
        "error": error,
    }
    if recorded.superseded:
        fields["superseded"] = True
    if recorded.outcome == "delivered":
        log.info("webhook_delivered", **fields)
    elif recorded.outcome == "failed":
        next_in = None if recorded.next_at is None else round(recorded.next_at / 1000 - time.time(), 3)
        log.warning("webhook_failed", next_attempt_in=next_in, **fields)
    else:
        log.warning("webhook_given_up", reason=error or f"HTTP {status}", **fields)


# --------------------------------------------------------------------------------------------------
# The loops (started in worker/main.py)
# --------------------------------------------------------------------------------------------------


async def run_webhook_reader(deps: Deps, stopping: asyncio.Event) -> None:
    reader = LogReader(deps.redis, webhook_store(deps.redis, deps.settings))
    try:
        await run_loop("webhook_reader", reader.step, stopping)
    finally:
        # Hand the log to another worker at once instead of after the lock's lifetime.
        try:
            await reader.release()
        except Exception:
            log.info("webhook_reader_lock_not_released")


async def run_webhook_sender(deps: Deps, stopping: asyncio.Event) -> None:
    settings = deps.settings
    session = webhook_session(allow_private=settings.webhook_allow_private_networks)
    sender = Sender(webhook_store(deps.redis, settings), session, settings)
    try:
        await run_loop("webhook_sender", sender.step, stopping)
    finally:
        # Attempts cut short here were never recorded: their leases run out and they are sent again.
        await sender.close()
        await session.close()
