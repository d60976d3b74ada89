"""What the api works out from the account pool, from Redis alone: estimates, the queue bound,
Retry-After and the usage summary. Nothing here calls the upstream.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.accounts import Account, AccountRegistry, AccountState
from shared.models import GenerationRecord
from shared.settings import Settings
from shared.store import GenerationStore, PoolSnapshot, views


async def snapshot(
    registry: AccountRegistry, store: GenerationStore, accounts: list[Account] | None = None
) -> PoolSnapshot:
    """Slots of the active accounts, how many are free now, and how long a generation takes.

    `accounts`: the registry as the caller already read it, to save reading it again.
    """
    if accounts is None:
        accounts = await registry.all()
    active = [account for account in accounts if account.state == AccountState.ACTIVE]
    in_flight = await registry.in_flight([account.name for account in active])
    return PoolSnapshot(
        total_slots=sum(account.max_concurrency for account in active),
        free_slots=sum(max(0, account.max_concurrency - in_flight[account.name]) for account in active),
        generation_seconds=await store.generation_seconds(),
    )


async def caller_views(
    registry: AccountRegistry,
    store: GenerationStore,
    records: list[GenerationRecord],
    accounts: list[Account] | None = None,
) -> list[dict[str, Any]]:
    """Seed-shaped views; waiting ones get a queue place and an estimate.

    The pool is read only when the page holds a waiting record, so reads of finished work stay
    one index read and one MGET.
    """
    positions = await store.waiting_positions(records)
    pool = await snapshot(registry, store, accounts) if positions else None
    return views(records, positions, pool)


def can_take_work(accounts: list[Account]) -> bool:
    """Whether a new generation can ever start: some account is active (resting after a 429 or a
    run of errors still counts: it comes back by itself). With no account registered yet (the
    workers register theirs when they start) it is accepted, and NO_ACCOUNT_DEADLINE_SECONDS
    still keeps it from waiting forever."""
    return not accounts or any(account.state == AccountState.ACTIVE for account in accounts)


async def next_usage_refresh(redis: Redis, accounts: list[Account]) -> int | None:
    """Whole seconds until a spent account's capacity is read again (None: no account is spent)."""
    spent = [account.name for account in accounts if account.state == AccountState.SPENT]
    if not spent:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for name in spent:
            pipe.pttl(keys.usage_lock(name))
        waits = await pipe.execute()
    # No lock means a refresh is due now; the next upkeep tick makes it.
    return max(1, math.ceil(min(max(0, int(wait)) for wait in waits) / 1000))


def max_queue_depth(accounts: list[Account], settings: Settings) -> int:
    """MAX_QUEUE_DEPTH, lowered to the accounts' own `max_queue` when every one of them sets it."""
    accounts = [account for account in accounts if account.state != AccountState.DISABLED]
    depth = settings.max_queue_depth
    bounds = [account.max_queue for account in accounts if account.max_queue is not None]
    if accounts and len(bounds) == len(accounts):
        depth = min(depth, sum(bounds))
    return depth


async def retry_after_seconds(registry: AccountRegistry, store: GenerationStore) -> int:
    """Roughly how soon a slot frees: one generation time spread over the pool's slots."""
    pool = await snapshot(registry, store)
    return max(1, math.ceil(pool.generation_seconds / max(1, pool.total_slots)))


def _usage_source(accounts: list[Account]) -> dict[str, Any]:
    """The cached upstream usage of the first account that has one, enabled accounts first."""
    for account in sorted(accounts, key=lambda account: account.state == AccountState.DISABLED):
        if account.usage:
            return account.usage
    return {}


async def usage(registry: AccountRegistry, *, with_accounts: bool) -> dict[str, Any]:
    """The seed's usage shape summed over the pool; the admin also sees one row per account."""
    accounts = await registry.all()
    counted = [account for account in accounts if account.state != AccountState.DISABLED]
    source = _usage_source(accounts)
    subscription = source.get("subscription")
    plans = source.get("plans")
    summary: dict[str, Any] = {
        "consumed": sum(account.consumed or 0 for account in counted),
        "capacity": sum(account.capacity or 0 for account in counted),
        "available": sum(account.available or 0 for account in counted),
        "subscription": (
            subscription if isinstance(subscription, dict) else {"active": False, "plan": None, "type": None}
        ),
        "plans": plans if isinstance(plans, list) else [],
    }
    if with_accounts:
        summary["accounts"] = [view.model_dump() for view in await registry.views()]
    return summary
