"""The api in-process on a real Redis: a TestClient factory, keys, and a way to see that nothing changed.

Fixtures:
    make_api   function: `await make_api(**settings)` starts create_app on the test's clean Redis
               with two key holders (KEY_A, KEY_B) and ADMIN_KEY unless overridden; closed after
    api        function: `make_api()` with the defaults
    registry   function: an AccountRegistry on the same Redis, to put accounts in the pool
Helpers: `account(name, **fields)` is an AccountConfig with a recognizable cookie; `auth(key)`
builds the Secret-Key header; `redis_state(redis)` is every key with its DUMP, so
`assert await redis_state(redis) == before` shows that a request changed nothing at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
import redis.asyncio as redis_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shared.accounts import AccountRegistry
from shared.settings import AccountConfig, Settings

KEY_A = "key-holder-alpha"
KEY_B = "key-holder-bravo"
ADMIN_KEY = "the-operators-admin-key"

ApiClient = TestClient[Any, Any]
MakeApi = Callable[..., Awaitable[ApiClient]]


def auth(key: str) -> dict[str, str]:
    return {"Secret-Key": key}


async def redis_state(client: redis_asyncio.Redis) -> dict[bytes, bytes | None]:
    """Every key in the database with its serialized value."""
    return {key: await client.dump(key) for key in sorted(await client.keys("*"))}


@pytest_asyncio.fixture
async def make_api(redis_url: str) -> AsyncIterator[MakeApi]:
    started: list[ApiClient] = []

    async def make(**overrides: Any) -> ApiClient:
        fields: dict[str, Any] = {
            "redis_url": redis_url,
            "secret_key": [KEY_A, KEY_B],
            "admin_key": ADMIN_KEY,
            **overrides,
        }
        settings = Settings(_env_file=None, **fields)
        client: ApiClient = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        started.append(client)
        return client

    yield make
    for client in started:
        await client.close()


@pytest_asyncio.fixture
async def api(make_api: MakeApi) -> ApiClient:
    return await make_api()


@pytest_asyncio.fixture
async def registry(redis_url: str) -> AsyncIterator[AccountRegistry]:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield AccountRegistry(client)
    finally:
        await client.aclose()


def account(name: str, **fields: Any) -> AccountConfig:
    return AccountConfig(name=name, cookie=f"access_token=cookie-of-{name}", **fields)
