"""What the api tells a caller about the account pool, from Redis alone: the usage summary.

Where a waiting generation stands (its place and wait), the queue bound and the Retry-After of
a refusal are worked out inside the store's Lua steps (shared/store.py), in the same round trip
as the read or the create they belong to. Nothing here calls the upstream.
"""

from __future__ import annotations

from typing import Any

from shared.accounts import Account, AccountRegistry, AccountState


def _usage_source(accounts: list[Account]) -> dict[str, Any]:
    """The cached upstream usage of the first account that has one, enabled accounts first."""
    for account in sorted(accounts, key=lambda account: account.state == AccountState.DISABLED):
        if account.usage:
            return account.usage
    return {}


async def usage(registry: AccountRegistry, *, with_accounts: bool) -> dict[str, Any]:
    """The seed's usage shape summed over the pool's web accounts (generations), the official
    accounts' credit beside it (cents); the admin also sees one row per account."""
    accounts = await registry.all()
    enabled = [account for account in accounts if account.state != AccountState.DISABLED]
    counted = [account for account in enabled if not account.official]
    official = [account for account in enabled if account.official]
    source = _usage_source([account for account in accounts if not account.official])
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
    if official:
        # Official accounts: their credit, less what claims in progress reserved, in US cents.
        summary["credit_balance"] = sum(account.available or 0 for account in official)
    if with_accounts:
        summary["accounts"] = [view.model_dump() for view in await registry.views()]
    return summary
