"""The error tree every upstream provider raises, whatever protocol it speaks.

    LumaError                      base: .status, .detail, .body (a short excerpt, never a credential)
    ├── UpstreamUnavailable        transient: 5xx, timeouts, resets; retried for idempotent calls
    │   ├── RequestNotSent         the request provably never reached the server: a create may be retried
    │   └── MalformedResponse      a 2xx whose body is not the JSON we expect (a create may have billed)
    ├── AccountExpired             401: the credentials are dead until an operator replaces them
    ├── UsageExhausted             the account's capacity is spent
    ├── RateLimited                429: .retry_after seconds, when the server said
    └── UpstreamRejected           any other 4xx: this request will never succeed as sent
        └── GenerationNotFound     404 on a generation

Each class says what it means for the account (`problem`), so the worker hands any of them to
shared/health.py's one policy instead of deciding an account's fate itself.
"""

from __future__ import annotations

import time
from typing import ClassVar

from shared.cookies import http_date
from shared.health import Problem


class LumaError(Exception):
    """Any failure talking to the upstream."""

    #: what the failure says about the account (shared/health.py decides what follows from it)
    problem: ClassVar[Problem] = Problem.TRANSIENT
    #: seconds the upstream asked us to wait, when it said
    retry_after: float | None = None

    def __init__(
        self, message: str, *, status: int | None = None, detail: object = None, body: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail
        self.body = body


class UpstreamUnavailable(LumaError):
    """Transient: 5xx, a timeout, a reset connection, or an unreadable 2xx body."""


class RequestNotSent(UpstreamUnavailable):
    """The request never reached the server (refused, DNS, connect timeout): safe to send again."""


class MalformedResponse(UpstreamUnavailable):
    """A 2xx whose body is not the JSON this call expects; treated as a transient fault."""


class AccountExpired(LumaError):
    """401: the account's token is expired or invalid until an operator gives it a new cookie."""

    problem = Problem.EXPIRED


class UsageExhausted(LumaError):
    """The account's monthly capacity is spent ("Maximum usage limit exceeded", 402, ...)."""

    problem = Problem.SPENT


class RateLimited(LumaError):
    """429: the account is saturated; `retry_after` is the server's hint in seconds, if any."""

    problem = Problem.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: object = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail, body=body)
        self.retry_after = retry_after


class UpstreamRejected(LumaError):
    """Any other 4xx: the request itself is wrong (validation, unknown route, forbidden)."""

    problem = Problem.REJECTED


class GenerationNotFound(UpstreamRejected):
    """404 on a generation id: the account does not have it."""


def error_class_for(
    status: int, *, spent: bool, not_found: type[UpstreamRejected] = UpstreamRejected
) -> type[LumaError]:
    """What an upstream's error status means for us. `spent`: the provider read the answer as
    "this account has no capacity left" (each API words that its own way)."""
    if status == 401:
        return AccountExpired
    if status == 402 or spent:
        return UsageExhausted
    if status == 429:
        return RateLimited
    if status == 404:
        return not_found
    if 400 <= status < 500:
        return UpstreamRejected
    # 5xx, and anything else unexpected (an unfollowed 3xx): transient as far as we can tell.
    return UpstreamUnavailable


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = http_date(value)
        if when is None:
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)
