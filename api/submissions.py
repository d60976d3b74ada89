"""Taking in new generations, one (create) or many (batch): the checks, the one atomic store step,
and what a refusal tells the caller.

Everything here happens before, or inside, the store's single Lua step, so a refused submission
(a private callback_url, a full queue, a holder over its limits, an Idempotency-Key used for
another request) has stored nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from api.appkeys import REDIS, REGISTRY, SETTINGS, STORE
from api.auth import Caller
from api.errors import (
    CallbackNotAllowed,
    HolderQueueFullError,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKey,
    NoAccountAvailable,
    QueueFullError,
    RateLimitedError,
)
from api.replication import confirm_replicated
from shared import netguard
from shared.accounts import AccountState
from shared.models import CreateRequest, GenerationRecord, new_id
from shared.settings import Settings
from shared.store import (
    Enqueued,
    HolderLimits,
    HolderQueueFull,
    IdempotencyKeyReused,
    NoAccount,
    QueueFull,
    RateLimited,
    views,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX = 255
RATE_WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Submitted:
    """What a create or batch answers: the generations as the caller sees them, and headers."""

    batch_id: str | None
    views: list[dict[str, object]]
    headers: dict[str, str]


def holder_limits(settings: Settings) -> HolderLimits:
    """Each key holder's defaults (an operator may override them per holder).

    One holder must not be able to fill the whole queue and lock the others out, so with more
    than one key each may have a quarter of MAX_QUEUE_DEPTH waiting; with one key (or none:
    an open api) there are no others to protect, and the holder may use all of it.
    """
    max_queued = settings.holder_max_queued
    if max_queued is None:
        shared = len(settings.secret_key) > 1
        max_queued = max(1, settings.max_queue_depth // 4) if shared else settings.max_queue_depth
    return HolderLimits(max_queued=max_queued, creates_per_minute=settings.holder_creates_per_minute)


def idempotency_key(request: web.Request) -> str | None:
    """The Idempotency-Key header: 1 to 255 printable ASCII characters, or absent."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX or not all(" " <= char <= "~" for char in value):
        raise InvalidIdempotencyKey
    return value


def request_hash(kind: str, body: object) -> str:
    """What "the same request" means for an Idempotency-Key: the endpoint and the validated body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{kind}\n{canonical}".encode()).hexdigest()


async def submit(
    request: web.Request,
    caller: Caller,
    creates: list[CreateRequest],
    *,
    kind: str,
    body: object,
    adjust: Callable[[GenerationRecord], None] | None = None,
) -> Submitted:
    """Check, store and queue `creates` for the caller, in order; all or none. The store's one
    round trip also says where each stands (place and wait) for the answer. `adjust` sets what
    a create body cannot (what an extend continues)."""
    app = request.app
    settings = app[SETTINGS]
    idempotency = idempotency_key(request)
    for url in dict.fromkeys(create.callback_url for create in creates if create.callback_url):
        await check_callback(settings, url)
    await check_providers(request, {create.provider for create in creates if create.provider})
    batch_id = new_id() if kind == "batch" else None
    # Whole microseconds, a microsecond apart in the order given: a batch lists newest first
    # like anything else (and float rounding cannot make two of them equal).
    now_us = round(time.time() * 1_000_000)
    records = []
    for index, create in enumerate(creates):
        record = GenerationRecord.new(caller.owner, create)
        record.created_ts = (now_us + index) / 1_000_000
        record.batch_id = batch_id
        if adjust is not None:
            adjust(record)
        # Kept on the record: the claim reserves it on an official account (worker/scheduler.py).
        record.price_cents = settings.official_price(record.model, record.resolution, record.duration)
        records.append(record)
    try:
        enqueued = await app[STORE].enqueue_many(
            records,
            max_depth=settings.max_queue_depth,
            limits=holder_limits(settings),
            idempotency=(idempotency, request_hash(kind, body)) if idempotency else None,
            idempotency_ttl=int(settings.idempotency_ttl_seconds),
        )
    except NoAccount as none:
        wait = none.retry_after
        raise NoAccountAvailable(
            "no Luma account can take work now (every one is expired, spent or disabled); nothing was "
            "stored" + (f"; retry in {wait}s, when capacity is read again" if wait else ""),
            headers={"Retry-After": str(wait)} if wait else {},
        ) from None
    except HolderQueueFull as full:
        raise HolderQueueFullError(
            f"you have {full.limit} generations waiting, your limit; nothing was stored, retry in "
            f"{full.retry_after}s",
            headers={"Retry-After": str(full.retry_after), **queue_headers(full.limit, 0)},
        ) from None
    except QueueFull as full:
        raise QueueFullError(
            f"the queue is full ({full.limit} waiting); nothing was stored, retry in {full.retry_after}s",
            headers={"Retry-After": str(full.retry_after)},
        ) from None
    except RateLimited as limited:
        wait = max(1, math.ceil(limited.retry_after_seconds))
        too_many = len(records) > limited.limit
        raise RateLimitedError(
            f"{len(records)} creates exceed your limit of {limited.limit} a minute; split them"
            if too_many
            else f"you made your {limited.limit} creates of this minute; retry in {wait}s",
            headers={"Retry-After": str(wait), **rate_headers(limited.limit, 0, wait)},
        ) from None
    except IdempotencyKeyReused:
        raise IdempotencyKeyReusedError from None
    await confirm_replicated(app[REDIS], settings, enqueued.ids)
    if enqueued.replayed:
        # The originals, as they stand now.
        records = await app[STORE].get_many(enqueued.ids)
        shown = views(records, await app[STORE].places(records))
    else:
        shown = views(records, enqueued.places)
    return Submitted(batch_id=enqueued.batch_id, views=shown, headers=_success_headers(enqueued))


async def check_providers(request: web.Request, wanted: set[str]) -> None:
    """Creates that name a provider need an active account of that kind (as any create needs one)."""
    if not wanted:
        return
    accounts = await request.app[REGISTRY].all()
    active = {account.kind for account in accounts if account.state is AccountState.ACTIVE}
    missing = sorted(wanted - active) if accounts else []
    if missing:
        raise NoAccountAvailable(
            f"no {' or '.join(missing)} account can take work now (none is active); nothing was stored"
        )


async def check_callback(settings: Settings, url: str) -> None:
    """A callback_url that is, or resolves to, an address in our own networks is refused (SSRF)."""
    try:
        await netguard.check_url(url, allow_private=settings.webhook_allow_private_networks)
    except netguard.AddressNotAllowed as exc:
        raise CallbackNotAllowed(f"callback_url is not allowed: {exc}", field="callback_url") from None


def rate_headers(limit: int, remaining: int, reset_seconds: int) -> dict[str, str]:
    """The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers) for creates."""
    return {
        "RateLimit-Policy": f'"creates";q={limit};w={RATE_WINDOW_SECONDS}',
        "RateLimit": f'"creates";r={remaining};t={reset_seconds}',
    }


def queue_headers(limit: int, remaining: int) -> dict[str, str]:
    """The same fields for the holder's bound on waiting generations (a quota with no window)."""
    return {"RateLimit-Policy": f'"queued";q={limit}', "RateLimit": f'"queued";r={remaining}'}


def _success_headers(enqueued: Enqueued) -> dict[str, str]:
    if enqueued.creates_left is None or enqueued.creates_limit is None:
        return {}
    return rate_headers(enqueued.creates_limit, enqueued.creates_left, RATE_WINDOW_SECONDS)
