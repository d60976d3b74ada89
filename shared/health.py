"""One home for an account's health: its states, why and since when, and what each upstream
failure means for it.

    state      the account...                                   leaves it when
    active     takes work                                       any of the below happens
    expired    answered 401: its session is dead                an operator gives it a new cookie
    spent      has no monthly capacity left                     a usage reading shows some again
    disabled   was taken out of the pool by an operator         an operator enables it
    (cooling)  is active, but rests until `breaker_until`:      the time passes
               after a 429, or after BREAKER_FAILURES transient
               failures in a row (so a down upstream is not hammered)

Every change of state is one Lua step that writes the account and appends an `account` event to
the event log, so the admin API can say why an account is out and since when, and the log's
readers (metrics, the dashboard) see it happen. `on_upstream_error` is the one policy that maps an
upstream failure to its consequence; workers call it and decide nothing about accounts themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

import structlog
from redis.asyncio import Redis

from shared import keys

log = structlog.get_logger(__name__)


class AccountState(StrEnum):
    ACTIVE = "active"  #: takes work
    EXPIRED = "expired"  #: the upstream answered 401: needs a new cookie from an operator
    SPENT = "spent"  #: the monthly capacity is used up
    DISABLED = "disabled"  #: an operator took it out of the pool


class Problem(StrEnum):
    """What an upstream failure says about the account it happened on."""

    EXPIRED = "expired"  #: 401: the credentials are dead
    SPENT = "spent"  #: the monthly capacity is exhausted
    RATE_LIMITED = "rate_limited"  #: 429: the account is saturated for a while
    TRANSIENT = "transient"  #: 5xx, timeouts, refused connections: the upstream's trouble
    REJECTED = "rejected"  #: this one request is wrong; nothing against the account


class UpstreamFailure(Protocol):
    """What the policy needs of an upstream error (worker/upstream/errors.py has the tree)."""

    @property
    def problem(self) -> Problem: ...

    @property
    def retry_after(self) -> float | None: ...


# Set the account's state unless it is in none of the expected states. Appends an account event
# when the state changes. KEYS: account hash, event log. ARGV: state, reason, now (s), expected
# states ('' = any), max log length, then field/value pairs to write with it.
# Returns the state it found ('' if the account does not exist: then nothing is written).
_SET_STATE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return '' end
if ARGV[4] ~= '' then
  local allowed = false
  for name in string.gmatch(ARGV[4], '[^,]+') do
    if name == current then allowed = true end
  end
  if not allowed then return current end
end
if current ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'state_reason', ARGV[2], 'state_at', ARGV[3])
else
  -- Still in it: a new reason, but the time it entered the state stays.
  redis.call('HSET', KEYS[1], 'state_reason', ARGV[2])
end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if current ~= ARGV[1] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'account',
    'account', redis.call('HGET', KEYS[1], 'name') or '', 'from', current, 'to', ARGV[1],
    'reason', ARGV[2], 'at', string.format('%d', tonumber(ARGV[3]) * 1000))
end
return current
"""

# Count a transient failure; at the threshold (or at once, for a pause the upstream named) rest
# the account until breaker_until. KEYS: account hash, event log. ARGV: threshold, pause ms
# ('' = the default pause once at the threshold), now ms, reason, max log length, default
# pause ms. Returns 1 if it now rests.
_COOL_DOWN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local pause = tonumber(ARGV[2])
if not pause then
  if failures < tonumber(ARGV[1]) then return 0 end
  pause = tonumber(ARGV[6])
end
local now = tonumber(ARGV[3])
local was = tonumber(redis.call('HGET', KEYS[1], 'breaker_until') or '0')
redis.call('HSET', KEYS[1], 'breaker_until', now + pause, 'failures', 0, 'breaker_reason', ARGV[4])
if was <= now then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'account',
    'account', redis.call('HGET', KEYS[1], 'name') or '', 'from', 'active', 'to', 'cooling',
    'reason', ARGV[4], 'at', ARGV[3])
end
return 1
"""


class AccountHealth:
    """The decisions about an account's fate, and the only writer of its state."""

    def __init__(
        self,
        redis: Redis,
        *,
        breaker_failures: int = 5,
        breaker_open_seconds: float = 30.0,
        event_log_max_len: int = 1_000_000,
    ) -> None:
        self.redis = redis
        self.breaker_failures = breaker_failures
        self.breaker_open_seconds = breaker_open_seconds
        self.event_log_max_len = event_log_max_len
        self._set_state = redis.register_script(_SET_STATE)
        self._cool_down = redis.register_script(_COOL_DOWN)

    async def set_state(
        self,
        name: str,
        state: AccountState,
        reason: str,
        *,
        expect: Iterable[AccountState] | None = None,
        **fields: str | int | float,
    ) -> AccountState | None:
        """Put the account in `state` (if it is in one of `expect`); returns the state it found."""
        args: list[str | int | float] = [
            state.value,
            reason,
            time.time(),
            ",".join(s.value for s in expect) if expect is not None else "",
            self.event_log_max_len,
        ]
        for field, value in fields.items():
            args += [field, value]
        found = await self._set_state(keys=[keys.account(name), keys.EVENTS], args=args)
        if not found:
            return None
        previous = AccountState(str(found))
        if previous != state and (expect is None or previous in expect):
            log.warning(
                "account_state", account=name, previous=previous.value, state=state.value, reason=reason
            )
        return previous

    # --- the policy -------------------------------------------------------------------------------

    async def on_upstream_error(self, name: str, error: UpstreamFailure, reason: str) -> None:
        """What an upstream failure on `name` means for the account."""
        if error.problem is Problem.EXPIRED:
            # An operator's disabling wins over what the upstream says.
            await self.set_state(
                name, AccountState.EXPIRED, reason, expect=(AccountState.ACTIVE, AccountState.SPENT)
            )
        elif error.problem is Problem.SPENT:
            # Until the next usage reading says otherwise; `available` 0 stops claims at once.
            await self.set_state(
                name,
                AccountState.SPENT,
                reason,
                expect=(AccountState.ACTIVE, AccountState.SPENT),
                available=0,
            )
            await self.redis.hincrby(keys.account(name), "usage_seq", 1)
        elif error.problem is Problem.RATE_LIMITED:
            await self._rest(name, error.retry_after or self.breaker_open_seconds, f"rate limited: {reason}")
        elif error.problem is Problem.TRANSIENT:
            await self._rest(name, None, f"upstream failing: {reason}")

    async def on_upstream_ok(self, name: str) -> None:
        """An answer from the upstream: the run of transient failures is over."""
        await self.redis.hset(keys.account(name), "failures", "0")

    async def on_usage(self, name: str, available: int, *, enough: int = 1) -> None:
        """A usage reading: less than `enough` left (one generation, or the cheapest price in
        cents) makes it spent; enough back revives a spent one."""
        if available < enough:
            reason = (
                "no monthly capacity left" if enough == 1 else "the credit balance cannot pay for a create"
            )
            await self.set_state(name, AccountState.SPENT, reason, expect=(AccountState.ACTIVE,))
        else:
            previous = await self.set_state(
                name, AccountState.ACTIVE, "", expect=(AccountState.SPENT, AccountState.ACTIVE)
            )
            if previous is AccountState.SPENT:
                await self.redis.lpush(keys.WAKE, "1")

    async def _rest(self, name: str, pause_seconds: float | None, reason: str) -> None:
        resting = await self._cool_down(
            keys=[keys.account(name), keys.EVENTS],
            args=[
                self.breaker_failures,
                "" if pause_seconds is None else int(pause_seconds * 1000),
                int(time.time() * 1000),
                reason,
                self.event_log_max_len,
                int(self.breaker_open_seconds * 1000),
            ],
        )
        if resting:
            log.warning("account_breaker_open", account=name, reason=reason)
