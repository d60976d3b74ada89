"""The account pool's registry in Redis: configuration, cookie, health and cached usage.

Settings seed the registry; the admin API changes it at run time; workers read it before every
choice, so a change takes effect without a restart. Cookies are stored here because every worker
needs the current one, and are never part of a view, a log line or an error.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from shared import keys
from shared.cookies import normalize_cookie
from shared.health import AccountHealth
from shared.health import AccountState as AccountState  # re-exported: the registry's vocabulary
from shared.settings import AccountConfig


class AccountExists(Exception):
    pass


class UnknownAccount(Exception):
    pass


@dataclass(frozen=True)
class Account:
    """An account as a worker uses it, cookie included."""

    name: str
    kind: str  # "web" or "official"
    cookie: str
    base_url: str
    max_concurrency: int
    max_queue: int | None
    state: AccountState
    state_reason: str
    state_at: float | None
    available: int | None  # None until the first usage refresh
    capacity: int | None
    consumed: int | None
    breaker_until: float
    breaker_reason: str
    usage: dict[str, Any] | None
    api_key: str = ""
    creates_per_minute: int | None = None
    # Which create route an official account answered (worker/upstream/official.py), once known.
    create_route: str = ""
    last_callback_at: float | None = None  # when Luma last called back about one of its generations

    def __repr__(self) -> str:  # never a credential: this can end up in tracebacks and logs
        return f"Account(name={self.name!r}, kind={self.kind!r}, state={self.state.value!r})"

    @property
    def official(self) -> bool:
        return self.kind == "official"

    @property
    def breaker_open(self) -> bool:
        return self.breaker_until > time.time()

    @property
    def usable(self) -> bool:
        return self.state == AccountState.ACTIVE and not self.breaker_open


class AccountView(BaseModel):
    """An account as the admin API shows it: never the cookie or the API key.

    `available`, `capacity` and `consumed` count generations on a web account; on an official
    one `available` and `credit_balance` are cents (the balance less what claims reserved).
    """

    name: str
    kind: str
    state: str
    state_reason: str | None
    state_at: float | None
    # Resting after a 429 or a run of upstream failures (see shared/health.py), and why.
    cooling: bool
    cooling_reason: str | None
    base_url: str
    limit: int
    max_queue: int | None
    in_flight: int
    available: int | None
    capacity: int | None
    consumed: int | None
    breaker_open: bool
    unit: str  # what available counts: "generations" or "cents"
    credit_balance: int | None  # official: the last GET /credits reading, in cents
    creates_per_minute: int | None
    creates_last_minute: int

    @property
    def usable(self) -> bool:
        """It can take work now, as Account.usable says of the account itself."""
        return self.state == AccountState.ACTIVE and not self.breaker_open


def _config_hash(config: AccountConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _credit_balance(account: Account) -> int | None:
    """An official account's balance as Luma last reported it, in cents."""
    if not account.official or not account.usage:
        return None
    balance = account.usage.get("credit_balance")
    return int(balance) if isinstance(balance, int | float) else None


class AccountRegistry:
    def __init__(self, redis: Redis, health: AccountHealth | None = None) -> None:
        self.redis = redis
        # Operators' changes of state (enable, disable, a new cookie) go through the one home.
        self.health = health if health is not None else AccountHealth(redis)

    async def sync_from_settings(self, configs: list[AccountConfig]) -> None:
        """Add configured accounts; re-apply one whose configuration changed since last start.

        Runtime changes (a cookie rotated by Set-Cookie, an admin's edit) survive restarts as
        long as the operator leaves that account's settings alone.
        """
        for config in configs:
            stored = await self.redis.hget(keys.account(config.name), "config_hash")
            digest = _config_hash(config)
            if stored == digest:
                continue
            await self._write_config(config, digest)

    async def add(self, config: AccountConfig) -> None:
        if await self.redis.sismember(keys.ACCOUNTS, config.name):
            raise AccountExists(config.name)
        await self._write_config(config, "admin")

    async def _write_config(self, config: AccountConfig, config_hash: str) -> None:
        """Write an account's configuration; a new account starts active, a reconfigured one too."""
        mapping: dict[str, Any] = {
            "name": config.name,
            "kind": config.kind,
            "cookie": normalize_cookie(config.cookie) if config.cookie else "",
            "api_key": config.api_key or "",
            "base_url": (config.base_url or "").rstrip("/"),
            "max_concurrency": config.max_concurrency,
            "creates_per_minute": config.creates_per_minute or "",
            "max_queue": "" if config.max_queue is None else config.max_queue,
            "breaker_until": 0,
            "failures": 0,
            "config_hash": config_hash,
        }
        key = keys.account(config.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            # A brand-new account's first state is no change of state: no event for it.
            pipe.hsetnx(key, "state", AccountState.ACTIVE.value)
            pipe.hsetnx(key, "state_at", str(time.time()))
            pipe.hset(key, mapping=mapping)
            pipe.sadd(keys.ACCOUNTS, config.name)
            await pipe.execute()
        await self.health.set_state(config.name, AccountState.ACTIVE, "")
        await self.redis.lpush(keys.WAKE, "1")

    async def update(
        self,
        name: str,
        *,
        enabled: bool | None = None,
        cookie: str | None = None,
        api_key: str | None = None,
        max_concurrency: int | None = None,
        creates_per_minute: int | None = None,
        max_queue: int | None = None,
        clear_max_queue: bool = False,
    ) -> None:
        """An operator's change. A new credential revives an expired account; enabling a disabled one.

        A credential of the other kind (a cookie for an official account) is refused with
        ValueError before anything is written.
        """
        account = await self.get(name)  # UnknownAccount before anything is written
        if (cookie is not None and account.official) or (api_key is not None and not account.official):
            raise ValueError(
                f"a {account.kind} account takes {'an api_key' if account.official else 'a cookie'}"
            )
        mapping: dict[str, Any] = {}
        if cookie is not None:
            mapping["cookie"] = normalize_cookie(cookie)
        if api_key is not None:
            mapping["api_key"] = api_key
        if creates_per_minute is not None:
            mapping["creates_per_minute"] = creates_per_minute
        if max_concurrency is not None:
            mapping["max_concurrency"] = max_concurrency
        if max_queue is not None or clear_max_queue:
            mapping["max_queue"] = "" if max_queue is None else max_queue
        if mapping:
            await self.redis.hset(keys.account(name), mapping=mapping)
        if cookie is not None or api_key is not None:
            await self.health.set_state(name, AccountState.ACTIVE, "", expect=(AccountState.EXPIRED,))
        if enabled is False:
            await self.health.set_state(name, AccountState.DISABLED, "disabled by an operator")
        elif enabled is True:
            await self.health.set_state(name, AccountState.ACTIVE, "", expect=(AccountState.DISABLED,))
        await self.redis.lpush(keys.WAKE, "1")

    async def names(self) -> list[str]:
        return sorted(await self.redis.smembers(keys.ACCOUNTS))

    async def get(self, name: str) -> Account:
        fields = await self.redis.hgetall(keys.account(name))
        if not fields:
            raise UnknownAccount(name)
        return self._account(fields)

    async def all(self) -> list[Account]:
        names = await self.names()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.account(name))
            rows = await pipe.execute()
        return [self._account(fields) for fields in rows if fields]

    @staticmethod
    def _account(fields: dict[str, str]) -> Account:
        usage = fields.get("usage")
        return Account(
            name=fields["name"],
            kind=fields.get("kind", "web"),
            cookie=fields.get("cookie", ""),
            base_url=fields.get("base_url", ""),
            max_concurrency=int(fields.get("max_concurrency", 3)),
            max_queue=_int_or_none(fields.get("max_queue")),
            state=AccountState(fields.get("state", AccountState.ACTIVE.value)),
            state_reason=fields.get("state_reason", ""),
            state_at=float(fields["state_at"]) if fields.get("state_at") else None,
            available=_int_or_none(fields.get("available")),
            capacity=_int_or_none(fields.get("capacity")),
            consumed=_int_or_none(fields.get("consumed")),
            breaker_until=float(fields.get("breaker_until") or 0) / 1000,
            breaker_reason=fields.get("breaker_reason", ""),
            usage=json.loads(usage) if usage else None,
            api_key=fields.get("api_key", ""),
            creates_per_minute=_int_or_none(fields.get("creates_per_minute")),
            create_route=fields.get("create_route", ""),
            last_callback_at=float(fields["callback_at"]) / 1000 if fields.get("callback_at") else None,
        )

    async def in_flight(self, names: list[str]) -> dict[str, int]:
        """Live leases per account (expired ones are not counted, whether or not swept yet)."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(keys.leases(name), now_ms, "+inf")
            counts = await pipe.execute()
        return {name: int(count) for name, count in zip(names, counts, strict=True)}

    async def creates_last_minute(self, names: list[str]) -> dict[str, int]:
        """Creates each account made (or has claimed to make) in the last minute."""
        since_ms = int(time.time() * 1000) - 60_000
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(keys.create_window(name), since_ms, "+inf")
            counts = await pipe.execute()
        return {name: int(count) for name, count in zip(names, counts, strict=True)}

    async def views(self) -> list[AccountView]:
        accounts = await self.all()
        names = [account.name for account in accounts]
        flights = await self.in_flight(names)
        recent = await self.creates_last_minute(names)
        return [
            AccountView(
                name=account.name,
                kind=account.kind,
                state=account.state.value,
                state_reason=account.state_reason or None,
                state_at=account.state_at,
                base_url=account.base_url,
                limit=account.max_concurrency,
                max_queue=account.max_queue,
                in_flight=flights[account.name],
                available=account.available,
                capacity=None if account.official else account.capacity,
                consumed=None if account.official else account.consumed,
                breaker_open=account.breaker_open,
                unit="cents" if account.official else "generations",
                credit_balance=_credit_balance(account),
                creates_per_minute=account.creates_per_minute,
                creates_last_minute=recent[account.name],
                cooling=account.breaker_open,
                cooling_reason=account.breaker_reason or None if account.breaker_open else None,
            )
            for account in accounts
        ]

    async def remember_create_route(self, name: str, route: str) -> None:
        """Which create route an official account takes, so no worker asks it twice."""
        await self.redis.hset(keys.account(name), "create_route", route)

    async def note_callback(self, name: str) -> None:
        """Luma called back about one of the account's generations: polling may slow down."""
        await self.redis.hset(keys.account(name), "callback_at", str(int(time.time() * 1000)))

    async def set_cookie(self, name: str, cookie: str) -> None:
        """Keep the session current with whatever the upstream's Set-Cookie rotated."""
        await self.redis.hset(keys.account(name), "cookie", cookie)

    async def mark(self, name: str, state: AccountState, reason: str) -> None:
        """Put the account in `state`, through the one home of account health."""
        await self.health.set_state(name, state, reason)
