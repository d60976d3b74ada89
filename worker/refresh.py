"""Luma's callbacks, on our side: the URL an official create carries, and the refresh it triggers.

An official account's create names `PUBLIC_BASE_URL/api/upstream/callback/<token>`, a token made
for that one create and known only by its hash in Redis. When Luma calls it, the api enqueues
`refresh` for the generation the token names, and that job reads the generation from the
upstream: the callback's body is a hint that something changed, never the state itself (it is
unsigned). Polling stays as the fallback; while an account's callbacks arrive it slows down
(worker/poller.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog

from shared import keys
from shared.accounts import Account, UnknownAccount
from shared.models import GenerationRecord
from worker.context import Deps, deps_of
from worker.lifecycle import observe
from worker.upstream.errors import LumaError

log = structlog.get_logger(__name__)

CALLBACK_PATH = "/api/upstream/callback/"


async def callback_url(deps: Deps, record: GenerationRecord, account: Account) -> str | None:
    """Where Luma may call back about this create (official accounts, with PUBLIC_BASE_URL set)."""
    base = deps.settings.public_base_url
    if not base or not account.official:
        return None
    token = secrets.token_urlsafe(24)
    await deps.redis.set(keys.upstream_callback(token), record.id, ex=deps.store.retention_seconds)
    return f"{base}{CALLBACK_PATH}{token}"


async def refresh(ctx: dict[str, Any], gen_id: str) -> str:
    """arq job: read one generation from its upstream now, because Luma said it changed."""
    deps = deps_of(ctx)
    structlog.contextvars.bind_contextvars(generation_id=gen_id)
    record = await deps.store.get(gen_id)
    if record is None or record.terminal or not record.upstream_id or not record.account:
        return "nothing to refresh"
    try:
        account = await deps.registry.get(record.account)
    except UnknownAccount:
        return "account removed"
    await deps.registry.note_callback(account.name)
    try:
        reading = await deps.provider(account).get(record.upstream_id)
    except LumaError as error:
        # The poller reads it again soon enough; the callback only made it sooner.
        log.info("refresh_failed", error=str(error))
        await deps.upstream_failed(account.name, error)
        return "upstream unreadable"
    observed = await observe(deps, record, reading, time.time())
    return "refreshed" if observed is not None else "ended"
