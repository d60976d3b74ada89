"""A create's callback_url: kept on the record, refused when it points into our own networks (SSRF)."""

from __future__ import annotations

import pytest
import redis.asyncio as redis_asyncio

from tests.api.conftest import KEY_A, MakeApi, auth, redis_state

PRIVATE_TARGETS = [
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.5/hook",
    "http://192.168.1.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "https://[fd00::1]/hook",
]


@pytest.mark.parametrize("url", PRIVATE_TARGETS)
async def test_a_callback_into_a_private_network_is_refused_and_stores_nothing(
    make_api: MakeApi, redis: redis_asyncio.Redis, url: str
) -> None:
    """Loopback, private, link-local, multicast, unspecified, IPv4-mapped: 400, nothing written."""
    api = await make_api()
    before = await redis_state(redis)
    response = await api.post(
        "/api/generations/create", json={"prompt": "hook me", "callback_url": url}, headers=auth(KEY_A)
    )
    assert response.status == 400
    body = await response.json()
    assert body["code"] == "callback_url_not_allowed" and body["field"] == "callback_url"
    assert await redis_state(redis) == before


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http://" + "a" * 2100])
async def test_a_callback_that_is_no_http_url_is_a_bad_request(make_api: MakeApi, url: str) -> None:
    """Only http(s) URLs of at most 2,048 characters; anything else is the usual field error."""
    api = await make_api()
    response = await api.post(
        "/api/generations/create", json={"prompt": "hook me", "callback_url": url}, headers=auth(KEY_A)
    )
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_request"


async def test_with_private_networks_allowed_a_loopback_callback_is_kept(make_api: MakeApi) -> None:
    """WEBHOOK_ALLOW_PRIVATE_NETWORKS (development, tests) lifts the refusal; the record keeps the URL."""
    api = await make_api(webhook_allow_private_networks=True)
    response = await api.post(
        "/api/generations/create",
        json={"prompt": "hook me", "callback_url": "http://127.0.0.1:9/hook"},
        headers=auth(KEY_A),
    )
    assert response.status == 200
    [view] = (await response.json())["data"]
    assert view["callback_url"] == "http://127.0.0.1:9/hook"
    detail = await api.get(f"/api/generations/{view['id']}", headers=auth(KEY_A))
    assert (await detail.json())["data"]["callback_url"] == "http://127.0.0.1:9/hook"
