"""What every job and background loop of a worker process shares, built once in on_startup."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from shared import keys
from shared.accounts import Account, AccountRegistry, AccountState
from shared.settings import Settings
from shared.store import GenerationStore
from worker.luma import LumaClient, RetryPolicy
from worker.scheduler import Scheduler

log = structlog.get_logger(__name__)


@dataclass
class Deps:
    settings: Settings
    redis: Redis  # decoded strings: records, accounts, scheduling
    arq: ArqRedis  # bytes: arq's own keys and uploaded images
    session: aiohttp.ClientSession
    store: GenerationStore
    registry: AccountRegistry
    scheduler: Scheduler
    # Generations whose submit job runs in this process and holds a slot it has not yet used
    # for a create: given back on shutdown so the next worker does not wait for them to expire.
    unused_leases: dict[str, str] = field(default_factory=dict)

    def client(self, account: Account) -> LumaClient:
        """A client for the account's current cookie; rotated cookies are written back at once."""

        async def keep_cookie(cookie: str) -> None:
            await self.registry.set_cookie(account.name, cookie)

        settings = self.settings
        return LumaClient(
            self.session,
            base_url=account.base_url or settings.luma_base_url,
            cookie=account.cookie,
            account=account.name,
            timeout=settings.upstream_timeout_seconds,
            retry=RetryPolicy(
                attempts=settings.upstream_retry_attempts,
                base_delay=settings.upstream_retry_base_seconds,
                max_delay=settings.upstream_retry_max_seconds,
                budget_seconds=settings.upstream_retry_budget_seconds,
            ),
            on_cookie=keep_cookie,
        )

    async def account_expired(self, account: str, reason: str) -> None:
        """401: the account is unusable until an operator gives it a new cookie."""
        log.warning("account_expired", account=account, reason=reason)
        await self.registry.mark(account, AccountState.EXPIRED, reason)

    async def account_spent(self, account: str, reason: str) -> None:
        log.warning("account_spent", account=account, reason=reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.account(account),
                mapping={
                    "state": AccountState.SPENT.value,
                    "state_reason": reason,
                    "state_at": time.time(),
                    "available": 0,
                },
            )
            pipe.hincrby(keys.account(account), "usage_seq", 1)
            await pipe.execute()

    async def upstream_fault(self, account: str, *, pause_seconds: float | None = None) -> None:
        """Count a transient failure; enough in a row open the account's circuit breaker.

        `pause_seconds` opens it at once (a 429 that names its own wait).
        """
        settings = self.settings
        failures = await self.redis.hincrby(keys.account(account), "failures", 1)
        if pause_seconds is None and failures < settings.breaker_failures:
            return
        pause = pause_seconds if pause_seconds is not None else settings.breaker_open_seconds
        until_ms = int((time.time() + pause) * 1000)
        await self.redis.hset(keys.account(account), mapping={"breaker_until": until_ms, "failures": 0})
        log.warning("account_breaker_open", account=account, seconds=pause)

    async def upstream_ok(self, account: str) -> None:
        await self.redis.hset(keys.account(account), "failures", "0")

    def fault_point(self, name: str) -> None:
        """Test-only crash switch: SIGKILL this process at a named point (FAULT_POINT=name)."""
        if self.settings.fault_point == name:
            log.warning("fault_point_kill", point=name)
            os.kill(os.getpid(), signal.SIGKILL)


def deps_of(ctx: dict[str, Any]) -> Deps:
    deps: Deps = ctx["deps"]
    return deps
