"""How every process reaches Redis, and how a Redis address may be shown.

Every client the api and the workers use (the store's, the registry's, arq's pool) is built here,
so each one gets the same socket timeouts: a Redis that stops answering without closing the
connection (frozen, or cut off by the network) turns into a TimeoutError within
REDIS_SOCKET_TIMEOUT_SECONDS, which the api answers as 503 `redis_unavailable` and a worker's
loops retry, instead of a request or a worker that hangs.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.settings import Settings

RedisT = TypeVar("RedisT", bound=Redis)

# A connection idle this long is PINGed before it is used again, so one that died quietly while
# nobody used it is replaced before it fails a real command.
HEALTH_CHECK_INTERVAL_SECONDS = 10


class CancellableWrites(AbstractConnection):
    """A connection whose write timeout keeps the caller's cancellation.

    redis-py bounds a write with `asyncio.wait_for`, which on Python 3.11 returns normally when a
    cancellation arrives just as the write completes (CPython gh-86296): the cancelled task runs
    on. Measured here, a loop of commands cancelled at random ignored it about half the time,
    enough that a worker's loops would not stop at shutdown. `asyncio.timeout` has no such race,
    so the write runs under it instead (with redis-py's own wait_for switched off) and a timeout
    is still redis-py's TimeoutError. Reads already use asyncio.timeout.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            # redis-py dropped the connection when the timeout interrupted it (BaseException).
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


def cancellable(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain, TLS, unix socket or Sentinel-managed) with CancellableWrites."""
    if issubclass(connection_class, CancellableWrites):
        return connection_class
    return type(f"Cancellable{connection_class.__name__}", (CancellableWrites, connection_class), {})


class ConnectsOutsideTheLock(ConnectionPool):
    """A pool that connects a new connection after letting go of its lock.

    redis-py 5 connects (TCP, then the handshake it reads a reply to) while holding the pool's
    lock (redis-py#3842), so while Redis hangs every caller queues behind the one connecting and
    N waiting requests take N timeouts. Here a connection is taken under the lock, as before, and
    connected by its own caller, so each fails within one timeout.
    """

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        async with self._lock:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


class SentinelPool(ConnectsOutsideTheLock, SentinelConnectionPool):
    """redis-py's pool of connections to the sentinels' primary, connecting outside its lock."""


def connection_options(settings: Settings) -> dict[str, Any]:
    """The socket options every connection to Redis is made with."""
    return {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
    }


def build_client(settings: Settings, redis_class: type[RedisT], *, decode_responses: bool) -> RedisT:
    """A `redis_class` client on the Redis that `settings` name. Nothing connects until first use.

    With REDIS_SENTINELS it is a client of whichever Redis the sentinels call the primary: each new
    connection asks them, and one still open to a primary that was demoted fails once (READONLY,
    as a ConnectionError) and is replaced.
    """
    client: RedisT
    if settings.redis_sentinels:
        client = sentinels(settings).master_for(
            settings.redis_sentinel_master,
            redis_class=redis_class,
            connection_pool_class=SentinelPool,
            decode_responses=decode_responses,
        )
    else:
        pool = ConnectsOutsideTheLock.from_url(
            settings.redis_url, decode_responses=decode_responses, **connection_options(settings)
        )
        client = redis_class(connection_pool=pool)
        client.auto_close_connection_pool = True  # it owns the pool: aclose() closes both
    client.connection_pool.connection_class = cancellable(client.connection_pool.connection_class)
    return client


def sentinels(settings: Settings) -> Sentinel:
    """The REDIS_SENTINELS, asked with our timeouts; the primary's database and password from REDIS_URL."""
    url = urllib.parse.urlsplit(settings.redis_url)
    options = connection_options(settings)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
        settings.redis_sentinels,
        # The sentinels themselves: same socket timeouts, none of the primary's credentials.
        sentinel_kwargs={name: value for name, value in options.items() if name.startswith("socket_")},
        db=int(url.path.lstrip("/") or 0),
        username=urllib.parse.unquote(url.username) if url.username else None,
        password=urllib.parse.unquote(url.password) if url.password else None,
        ssl=url.scheme == "rediss",
        **options,
    )
    for client in sentinel.sentinels:
        client.connection_pool.connection_class = cancellable(client.connection_pool.connection_class)
    return sentinel


def redis_client(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """The client for records, indexes and accounts (decoded strings unless asked otherwise)."""
    return build_client(settings, Redis, decode_responses=decode_responses)


def redacted_url(url: str) -> str:
    """The Redis URL without its password, for logs and banners: `redis://user:***@host:6379/0`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        # redis-py also reads a password from the query string (`?password=...`).
        query = [
            (name, "***" if "password" in name.lower() else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urllib.parse.urlencode(query, safe="*"))
    return urllib.parse.urlunsplit(parts)


async def replicas_confirm(redis: Redis, settings: Settings) -> tuple[int, int]:
    """(replicas that have every write made so far, replicas wanted): REDIS_MIN_REPLICAS_ACKED.

    WAIT counts the replicas that have the last write of *its own connection*, and the writes that
    matter were made on other pooled connections; so a probe is written on this one first. Replicas
    apply the stream in order: one that has the probe has every write acknowledged before it.
    """
    wanted = settings.redis_min_replicas_acked
    if not wanted:
        return 0, 0
    timeout_ms = max(1, round(settings.redis_replica_ack_timeout_seconds * 1000))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(keys.REPLICATION_PROBE)
        pipe.wait(wanted, timeout_ms)
        _, acked = await pipe.execute()
    return int(acked), wanted


async def durability_gap(redis: Redis, settings: Settings) -> str | None:
    """Why an acknowledged write could be lost if this Redis crashed, or None if it cannot be.

    A create's intent is written, acknowledged, and only then paid for: if a crash loses it, the
    generation is created a second time. With `appendfsync always` Redis syncs the file before it
    answers; with `everysec` it answers first, and on a busy disk it postpones even the write for
    up to 2 s. A replica that must confirm each intent (REDIS_MIN_REPLICAS_ACKED) covers the same
    gap another way. Managed Redis often refuses CONFIG: then we cannot tell, and say nothing.
    """
    if settings.redis_min_replicas_acked:
        return None
    try:
        config = await redis.config_get("append*")
    except RedisError:
        return None
    if config.get("appendonly") != "yes":
        return "appendonly is off: a Redis restart loses every queued generation"
    if config.get("appendfsync") != "always":
        return (
            f"appendfsync is {config.get('appendfsync')!r}: a Redis crash can lose the last seconds of "
            "acknowledged writes, and with them the record that a create was already paid for"
        )
    return None
