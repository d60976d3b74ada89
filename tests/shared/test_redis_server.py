"""The real-Redis fixtures themselves: what other tests rely on when they kill and restart Redis."""

from __future__ import annotations

import redis.asyncio as redis_asyncio

from tests.fixtures.redis import RedisServer


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
