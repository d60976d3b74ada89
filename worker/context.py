"""What every job and background loop of a worker process shares, built once in on_startup."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from shared.accounts import Account, AccountRegistry
from shared.events import EventLog
from shared.files import FileStore
from shared.health import AccountHealth
from shared.settings import Settings
from shared.store import GenerationStore
from worker.scheduler import Scheduler
from worker.upstream import Provider, provider_for
from worker.upstream.errors import LumaError
from worker.upstream.official import OfficialDefaults
from worker.upstream.retry import RetryPolicy

log = structlog.get_logger(__name__)


@dataclass
class Deps:
    settings: Settings
    redis: Redis  # decoded strings: records, accounts, scheduling
    arq: ArqRedis  # bytes: arq's own keys and uploaded images
    session: aiohttp.ClientSession
    store: GenerationStore
    registry: AccountRegistry
    health: AccountHealth
    scheduler: Scheduler
    events: EventLog
    files: FileStore  # images the gateway keeps itself (shared/files.py)
    # For callers' URLs (external images): connects to public addresses only (worker/images.py).
    fetch_session: aiohttp.ClientSession
    # Generations whose submit job runs in this process and holds a slot it has not yet used
    # for a create: given back on shutdown so the next worker does not wait for them to expire.
    unused_leases: dict[str, str] = field(default_factory=dict)

    def provider(self, account: Account) -> Provider:
        """The account's upstream, with its current credentials; rotated cookies are kept at once."""

        async def keep_cookie(cookie: str) -> None:
            await self.registry.set_cookie(account.name, cookie)

        async def keep_create_route(route: str) -> None:
            await self.registry.remember_create_route(account.name, route)

        settings = self.settings
        return provider_for(
            account,
            self.session,
            timeout=settings.upstream_timeout_seconds,
            create_timeout=settings.upstream_create_timeout_seconds,
            retry=RetryPolicy(
                attempts=settings.upstream_retry_attempts,
                base_delay=settings.upstream_retry_base_seconds,
                max_delay=settings.upstream_retry_max_seconds,
                budget_seconds=settings.upstream_retry_budget_seconds,
            ),
            on_cookie=keep_cookie,
            on_create_route=keep_create_route,
            official_defaults=OfficialDefaults(
                model=settings.official_default_model,
                resolution=settings.official_default_resolution,
                duration=settings.official_default_duration,
            ),
        )

    async def upstream_failed(self, account: str, error: LumaError) -> None:
        """Whatever the failure means for the account, shared/health.py decides."""
        await self.health.on_upstream_error(account, error, error.message)

    def fault_point(self, name: str) -> None:
        """Test-only crash switch: SIGKILL this process at a named point (FAULT_POINT=name)."""
        if self.settings.fault_point == name:
            log.warning("fault_point_kill", point=name)
            os.kill(os.getpid(), signal.SIGKILL)


def deps_of(ctx: dict[str, Any]) -> Deps:
    deps: Deps = ctx["deps"]
    return deps
