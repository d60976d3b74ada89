"""Secret-Key: every endpoint is guarded, each key is one holder, the admin key opens only what it should."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from aiohttp import FormData

from api.auth import OPEN_OWNER, owner_id
from shared import keys
from tests.api.conftest import ADMIN_KEY, KEY_A, KEY_B, ApiClient, MakeApi, auth, redis_state
from tests.images import PNG


def upload_form() -> FormData:
    form = FormData()
    form.add_field("file", PNG, filename="a.png", content_type="image/png")
    return form


# (method, path, a valid body): every endpoint a key holder may call.
HOLDER_ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/generations", {}),
    ("GET", "/api/generations/some-id", {}),
    ("GET", "/api/generations/usage", {}),
    ("POST", "/api/generations/create", {"json": {"prompt": "a fox"}}),
    ("POST", "/api/generations/upload", {"data": "form"}),
]
ADMIN_ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/admin/accounts", {}),
    ("POST", "/api/admin/accounts", {"json": {"name": "acc", "cookie": "access_token=secret"}}),
    ("PATCH", "/api/admin/accounts/acc", {"json": {"enabled": False}}),
]


def request_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    return {"data": upload_form()} if body.get("data") == "form" else dict(body)


@pytest.mark.parametrize(("method", "path", "body"), HOLDER_ENDPOINTS + ADMIN_ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, auth("wrong-key"), auth(""), auth(KEY_A[:-1])])
async def test_every_endpoint_refuses_a_missing_or_wrong_key_and_changes_nothing(
    api: ApiClient,
    redis: redis_asyncio.Redis,
    method: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    """Reads too: without a configured key the answer is 401 unauthorized, and Redis is untouched."""
    before = await redis_state(redis)

    response = await api.request(method, path, headers=headers, **request_kwargs(body))

    assert response.status == 401
    answer = await response.json()
    assert answer["code"] == "unauthorized"
    assert "Secret-Key" in answer["message"]
    assert await redis_state(redis) == before


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
@pytest.mark.parametrize("key", [KEY_A, KEY_B])
async def test_a_holder_key_does_not_open_the_admin_api(
    api: ApiClient, method: str, path: str, body: dict[str, Any], key: str
) -> None:
    """Only ADMIN_KEY opens /api/admin/*; a caller's SECRET_KEY is refused there."""
    response = await api.request(method, path, headers=auth(key), **request_kwargs(body))

    assert response.status == 401
    assert (await response.json())["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "body"), [endpoint for endpoint in HOLDER_ENDPOINTS if "usage" not in endpoint[1]]
)
async def test_the_admin_key_is_not_a_holder_key(
    api: ApiClient, method: str, path: str, body: dict[str, Any]
) -> None:
    """ADMIN_KEY owns no generations: outside usage it is refused like any unknown key."""
    response = await api.request(method, path, headers=auth(ADMIN_KEY), **request_kwargs(body))

    assert response.status == 401


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
async def test_admin_api_is_disabled_without_an_admin_key(
    make_api: MakeApi, method: str, path: str, body: dict[str, Any]
) -> None:
    """With ADMIN_KEY empty, /api/admin/* answers 404 admin_disabled whatever key is sent."""
    api = await make_api(admin_key="")

    for headers in ({}, auth(KEY_A), auth("")):
        response = await api.request(method, path, headers=headers, **request_kwargs(body))
        assert response.status == 404
        assert (await response.json())["code"] == "admin_disabled"


async def test_an_open_api_serves_everyone_as_one_holder(
    make_api: MakeApi, redis: redis_asyncio.Redis
) -> None:
    """With no SECRET_KEY every caller, key or not, is the holder "open"."""
    api = await make_api(secret_key=[])

    created = await api.post("/api/generations/create", json={"prompt": "open"})
    assert created.status == 200
    [view] = (await created.json())["data"]

    for headers in ({}, auth("anything")):
        listed = await api.get("/api/generations", headers=headers)
        assert [item["id"] for item in (await listed.json())["data"]] == [view["id"]]
    assert await redis.zscore(keys.owner_index(OPEN_OWNER), view["id"]) is not None


async def test_records_name_their_holder_by_a_hash_never_by_the_key(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """The owner id is the key's SHA-256 prefix, and no key appears anywhere in Redis."""
    created = await api.post("/api/generations/create", json={"prompt": "whose"}, headers=auth(KEY_A))
    [view] = (await created.json())["data"]

    stored = await redis.get(keys.generation(view["id"]))
    assert stored is not None and f'"owner":"{owner_id(KEY_A)}"'.encode() in stored
    for key in await redis.keys("*"):
        assert KEY_A.encode() not in key + b"".join(await plain_values(redis, key.decode()))


async def plain_values(redis: redis_asyncio.Redis, key: str) -> list[bytes]:
    """A key's members and values, uncompressed (DUMP may compress them)."""
    kind = await redis.type(key)
    if kind == b"string":
        return [await redis.get(key) or b""]
    if kind == b"hash":
        return [field + value for field, value in (await redis.hgetall(key)).items()]
    if kind == b"zset":
        return list(await redis.zrange(key, 0, -1))
    if kind == b"list":
        return list(await redis.lrange(key, 0, -1))
    if kind == b"stream":
        return [b"".join(k + v for k, v in fields.items()) for _, fields in await redis.xrange(key)]
    return list(await redis.smembers(key))
