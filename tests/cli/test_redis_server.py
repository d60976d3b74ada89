"""The redis-server launcher and the fixtures on it: what other tests rely on when they kill, restart
or freeze Redis."""

from __future__ import annotations

import pytest
import redis as redis_sync
import redis.asyncio as redis_asyncio

from cli.redis_server import RedisServer


def test_kill_and_start_keeps_acknowledged_writes(fresh_redis_server: RedisServer) -> None:
    """A write acknowledged before a SIGKILL is there after start(), read back from the AOF."""
    port = fresh_redis_server.port
    client = fresh_redis_server.client()
    client.set("survivor", "yes")
    client.rpush("queue", "a", "b")
    client.close()

    fresh_redis_server.kill()
    assert not fresh_redis_server.running
    fresh_redis_server.start()

    assert fresh_redis_server.port == port
    client = fresh_redis_server.client()
    try:
        assert client.get("survivor") == b"yes"
        assert client.lrange("queue", 0, -1) == [b"a", b"b"]
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()


def test_stop_and_start_keeps_data(fresh_redis_server: RedisServer) -> None:
    """A clean stop (SIGTERM) and start keep the data too."""
    client = fresh_redis_server.client()
    client.set("kept", "1")
    client.close()

    fresh_redis_server.stop()
    fresh_redis_server.start()

    client = fresh_redis_server.client()
    try:
        assert client.get("kept") == b"1"
    finally:
        client.close()


async def test_redis_fixture_starts_on_an_empty_database(redis: redis_asyncio.Redis) -> None:
    """Each test's client sees an empty database on the session server."""
    assert await redis.dbsize() == 0
    await redis.set("left-behind", "by this test")
    assert await redis.get("left-behind") == b"by this test"


async def test_redis_fixture_does_not_see_the_previous_tests_keys(redis: redis_asyncio.Redis) -> None:
    """FLUSHALL runs before every test, so nothing leaks from the test above."""
    assert await redis.exists("left-behind") == 0


def test_freeze_stops_answers_and_thaw_brings_them_back(fresh_redis_server: RedisServer) -> None:
    """A frozen server keeps its port open but answers nothing; thawed, it answers with its data."""
    client = fresh_redis_server.client()
    client.set("before", "freeze")
    fresh_redis_server.freeze()
    frozen = redis_sync.Redis.from_url(fresh_redis_server.url, socket_timeout=0.3)
    try:
        with pytest.raises(redis_sync.TimeoutError):
            frozen.ping()
    finally:
        frozen.close()
    fresh_redis_server.thaw()
    try:
        assert client.get("before") == b"freeze"
    finally:
        client.close()


def test_a_frozen_server_can_still_be_stopped(fresh_redis_server: RedisServer) -> None:
    """stop() on a frozen server resumes it so that SIGTERM takes effect, rather than hanging."""
    fresh_redis_server.freeze()
    fresh_redis_server.stop()
    assert not fresh_redis_server.running
