"""How hard an idempotent upstream call tries: one policy object and one loop, for every provider."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from worker.upstream.errors import LumaError, RateLimited, RequestNotSent, UpstreamUnavailable

T = TypeVar("T")

# What is worth another attempt: transient faults and rate limits for reads; for a create, only
# a request that provably never left (anything else may have been billed: it is reconciled).
TRANSIENT: tuple[type[LumaError], ...] = (UpstreamUnavailable, RateLimited)
NOT_SENT: tuple[type[LumaError], ...] = (RequestNotSent,)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a number of attempts and a time budget."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    budget_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.budget_seconds < 0:
            raise ValueError("delays and budget must not be negative")

    def backoff(self, failures: int) -> float:
        """A random delay in [0, min(max_delay, base_delay * 2**(failures-1))] ("full jitter")."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(max(failures - 1, 0), 60))
        return random.uniform(0.0, ceiling)

    def delay_after(self, error: LumaError, failures: int) -> float:
        """How long to wait before the next attempt after `error`, the `failures`-th in a row."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.max_delay)
        return self.backoff(failures)

    async def run(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        retry_on: tuple[type[LumaError], ...] = TRANSIENT,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> T:
        """`attempt()` until it succeeds, fails with something not in `retry_on`, or the policy ends."""
        deadline = time.monotonic() + self.budget_seconds
        failures = 0
        while True:
            try:
                return await attempt()
            except retry_on as exc:
                failures += 1
                if failures >= self.attempts:
                    raise
                delay = self.delay_after(exc, failures)
                if time.monotonic() + delay > deadline:
                    raise
                (log or structlog.get_logger(__name__)).warning(
                    "luma.retry",
                    operation=operation,
                    attempt=failures,
                    delay=round(delay, 3),
                    error=type(exc).__name__,
                    status=exc.status,
                    message=exc.message,
                )
                await asyncio.sleep(delay)


DEFAULT_RETRY = RetryPolicy()
