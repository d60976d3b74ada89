"""Connecting to Redis: timeouts that keep cancellation working, and how an address is shown."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from cli.redis_server import RedisServer
from shared.redisconn import durability_gap, redacted_url, redis_client
from shared.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:s3cret@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
        ("redis://app:p@ss@word@redis:6379", "redis://app:***@redis:6379"),
        ("redis://redis:6379/0?password=s3cret&db=2", "redis://redis:6379/0?password=***&db=2"),
    ],
)
def test_redacted_url_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    """User, host, port, database and options stay readable; the password never appears."""
    assert redacted_url(url) == shown
    assert "s3cret" not in redacted_url(url)


def settings_for(redis_url: str, **fields: Any) -> Settings:
    return Settings(_env_file=None, redis_url=redis_url, **fields)


async def _busy(client: Redis, stop: asyncio.Event) -> None:
    """What a worker's loop does to Redis: single commands and a transaction, over and over."""
    while not stop.is_set():
        await client.zrangebyscore("queue", min=float("-inf"), max=1, start=0, num=10)
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrange("aborted", 0, -1)
            pipe.zremrangebyscore("aborted", min=1, max=2)
            await pipe.execute()
        await client.psetex("health", 1000, "ok")


async def test_a_task_cancelled_in_the_middle_of_commands_always_ends(redis_url: str) -> None:
    """Cancelled at any moment, a task using our client stops; redis-py's own write timeout loses some."""
    rng = random.Random(7)
    settings = settings_for(redis_url)
    for attempt in range(150):
        client = redis_client(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(_busy(client, stop))
        await asyncio.sleep(rng.uniform(0.001, 0.01))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        stop.set()  # a task that ignored its cancellation ends at its next round
        await asyncio.wait([task], timeout=2)
        await client.aclose()
        assert done, f"attempt {attempt}: the cancelled task went on running"


async def test_a_frozen_redis_is_a_redis_timeout_error_not_a_hang(fresh_redis_server: RedisServer) -> None:
    """With the server stopped (SIGSTOP), a command fails with redis-py's TimeoutError, as the api expects."""
    client = redis_client(
        settings_for(fresh_redis_server.url, redis_socket_timeout_seconds=1.5, dispatch_idle_seconds=0.2)
    )
    try:
        await client.set("before", "1")
        fresh_redis_server.freeze()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(client.set("during", "1"), timeout=30)
        fresh_redis_server.thaw()
        assert await client.get("before") == "1"
    finally:
        fresh_redis_server.thaw()
        await client.aclose()


async def test_callers_waiting_on_a_frozen_redis_fail_side_by_side_not_one_after_another(
    fresh_redis_server: RedisServer,
) -> None:
    """Eight calls needing new connections to a frozen Redis each time out once, together."""
    timeout = 1.5
    client = redis_client(settings_for(fresh_redis_server.url, redis_socket_timeout_seconds=timeout))
    fresh_redis_server.freeze()
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get(f"k{n}") for n in range(8)), return_exceptions=True)
        took = time.monotonic() - started
    finally:
        fresh_redis_server.thaw()
        await client.aclose()
    assert all(isinstance(result, RedisTimeoutError) for result in results), results
    # A sanity bound, not a measurement: one after another they would take 8 timeouts (12 s).
    assert took < 2 * timeout + 1, took


def test_the_dispatchers_blocking_wait_must_fit_in_the_socket_timeout() -> None:
    """A DISPATCH_IDLE_SECONDS the socket timeout would cut is refused when settings are read."""
    with pytest.raises(ValidationError, match="DISPATCH_IDLE_SECONDS"):
        Settings(_env_file=None, dispatch_idle_seconds=2, redis_socket_timeout_seconds=2)
    assert Settings(_env_file=None, dispatch_idle_seconds=1.5, redis_socket_timeout_seconds=2)


def test_sentinels_are_read_as_host_port_pairs() -> None:
    """REDIS_SENTINELS is comma-separated host:port; a bracketed IPv6 host loses its brackets."""
    settings = Settings(_env_file=None, redis_sentinels="10.0.0.1:26379, sentinel-b:26380,[::1]:26381")
    assert settings.redis_sentinels == [("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)]
    assert Settings(_env_file=None).redis_sentinels == []


@pytest.mark.parametrize("value", ["sentinel-a", "sentinel-a:port", ":26379"])
def test_a_sentinel_without_a_port_is_refused(value: str) -> None:
    """A sentinel address that is not host:port stops the process at start, naming the entry."""
    with pytest.raises(ValidationError, match="host:port"):
        Settings(_env_file=None, redis_sentinels=value)


def test_a_socket_timeout_that_would_cut_a_read_of_the_event_log_is_refused() -> None:
    """Readers of the event log block 1 s in XREAD, so a shorter socket timeout is refused at start."""
    with pytest.raises(ValidationError, match="event log"):
        Settings(_env_file=None, dispatch_idle_seconds=0.2, redis_socket_timeout_seconds=1.2)


def test_a_replica_wait_the_socket_timeout_would_cut_is_refused() -> None:
    """With REDIS_MIN_REPLICAS_ACKED set, the WAIT's own timeout must fit in the socket timeout too."""
    with pytest.raises(ValidationError, match="REDIS_REPLICA_ACK_TIMEOUT_SECONDS"):
        Settings(_env_file=None, redis_min_replicas_acked=1, redis_replica_ack_timeout_seconds=2)
    assert Settings(_env_file=None, redis_min_replicas_acked=0, redis_replica_ack_timeout_seconds=2)


async def test_durability_gap_names_a_redis_that_answers_before_its_writes_are_on_disk(
    fresh_redis_server: RedisServer,
) -> None:
    """The shipped setting (always) has no gap; everysec and no AOF are named; a replica closes it."""
    settings = settings_for(fresh_redis_server.url)
    client = redis_client(settings)
    try:
        assert await durability_gap(client, settings) is None
        await client.config_set("appendfsync", "everysec")
        gap = await durability_gap(client, settings)
        assert gap is not None and "'everysec'" in gap and "paid for" in gap
        with_a_replica = settings.model_copy(update={"redis_min_replicas_acked": 1})
        assert await durability_gap(client, with_a_replica) is None
        await client.config_set("appendonly", "no")
        gap = await durability_gap(client, settings)
        assert gap is not None and "appendonly is off" in gap
    finally:
        await client.aclose()
