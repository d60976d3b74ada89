"""Upstream providers: one interface for every way of reaching Luma, one implementation per kind.

The scheduler, submit, reconcile, poller, usage and upload code speak only `Provider`; which
protocol an account speaks is its `kind` (`web`, the Luma web API of UPSTREAM.md §1, or
`official`, the Dream Machine API of §2), and `provider_for` is the one place that turns an
account into the provider for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from shared.accounts import Account
from shared.models import GenerationRecord
from worker.upstream.models import UploadSlot, UpstreamGeneration, UpstreamUsage
from worker.upstream.official import OfficialClient, OfficialDefaults, OfficialProvider
from worker.upstream.retry import RetryPolicy
from worker.upstream.web import LumaClient, WebProvider


class Provider(Protocol):
    """One account's upstream. Every method raises worker/upstream/errors.py's exceptions."""

    account: str

    async def create(
        self, record: GenerationRecord, *, callback_url: str | None = None
    ) -> UpstreamGeneration:
        """Create the generation upstream: the paid call. Never retried once it may have been sent.

        An extend (`record.extend_upstream_id`) is a create too, continuing that generation;
        `callback_url` is where the upstream may call back about it (where it can).
        """
        ...

    async def get(self, upstream_id: str) -> UpstreamGeneration: ...

    async def list_recent(self, offset: int, limit: int) -> list[UpstreamGeneration]:
        """The account's generations, newest first (what reconcile and the poller read)."""
        ...

    async def usage(self) -> UpstreamUsage: ...

    async def keep_alive(self) -> None:
        """A cheap authenticated call that keeps the account's session alive."""
        ...

    async def upload(self, data: bytes, content_type: str, filename: str) -> UploadSlot:
        """Put an image on the account, answering once the bytes are there."""
        ...

    async def download_url(self, upstream_id: str) -> str | None:
        """A completed generation's watermark-free video link, where the account has one."""
        ...


def provider_for(
    account: Account,
    session: aiohttp.ClientSession,
    *,
    timeout: float,
    create_timeout: float,
    retry: RetryPolicy,
    on_cookie: Callable[[str], Awaitable[None]],
    on_create_route: Callable[[str], Awaitable[None]] | None = None,
    official_defaults: OfficialDefaults | None = None,
) -> Provider:
    """The provider for the account's kind, speaking with its current credentials."""
    if account.kind == "web":
        client = LumaClient(
            session,
            base_url=account.base_url,
            cookie=account.cookie,
            account=account.name,
            timeout=timeout,
            create_timeout=create_timeout,
            retry=retry,
            on_cookie=on_cookie,
        )
        return WebProvider(client)
    if account.kind == "official":
        official = OfficialClient(
            session,
            base_url=account.base_url,
            api_key=account.api_key,
            account=account.name,
            timeout=timeout,
            create_timeout=create_timeout,
            retry=retry,
            create_route=account.create_route,
            on_create_route=on_create_route,
        )
        return OfficialProvider(official, official_defaults)
    raise ValueError(f"account {account.name!r} has an unknown kind {account.kind!r}")
