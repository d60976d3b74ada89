"""The api's side of official accounts, extend, Luma's callbacks, kept files and /luma/*: no worker."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis_asyncio
from structlog.testing import capture_logs

from shared import keys
from shared.accounts import AccountRegistry
from shared.files import DirectoryStore, new_file_id
from shared.settings import AccountConfig
from tests.api.conftest import ADMIN_KEY, KEY_A, KEY_B, ApiClient, MakeApi, account, auth, redis_state
from tests.images import PNG

API_KEY = "luma-secret-api-key-000111222"


def official(name: str = "api", **fields: Any) -> AccountConfig:
    return AccountConfig(name=name, kind="official", api_key=API_KEY, base_url="http://x", **fields)


async def test_an_official_account_takes_its_key_and_its_documented_limits_and_never_shows_the_key(
    api: ApiClient,
) -> None:
    """POST kind official with an api_key: 10 at once and 20 a minute by default; the key never comes out."""
    admin = auth(ADMIN_KEY)
    added = await api.post(
        "/api/admin/accounts", json={"name": "api", "kind": "official", "api_key": API_KEY}, headers=admin
    )
    text = await added.text()
    assert added.status == 201, text
    assert API_KEY not in text
    view = (await added.json())["data"]
    assert view["kind"] == "official" and view["limit"] == 10 and view["creates_per_minute"] == 20
    assert view["base_url"] == "https://api.lumalabs.ai/dream-machine/v1" and view["unit"] == "cents"

    wrong = await api.patch("/api/admin/accounts/api", json={"cookie": "access_token=x"}, headers=admin)
    assert wrong.status == 400 and (await wrong.json())["code"] == "invalid_request"
    missing = await api.post(
        "/api/admin/accounts", json={"name": "k", "kind": "official", "cookie": API_KEY}, headers=admin
    )
    assert missing.status == 400 and API_KEY not in await missing.text()
    listed = await api.get("/api/admin/accounts", headers=admin)
    assert API_KEY not in await listed.text()


async def test_official_options_route_the_create_and_contradictions_are_refused(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """model/resolution/duration/keyframes make provider official with its price; web + model is a 400."""
    await registry.add(account("web"))
    await registry.add(official())
    response = await api.post(
        "/api/generations/create",
        json={
            "prompt": "p",
            "model": "ray-2",
            "resolution": "1080p",
            "keyframes": {"frame0": {"type": "image", "url": "https://img.example/a.png"}},
        },
        headers=auth(KEY_A),
    )
    assert response.status == 200, await response.text()
    [view] = (await response.json())["data"]
    assert (
        view["provider"] == "official"
        and view["model"] == "ray-2"
        and view["image"] == "https://img.example/a.png"
    )

    before = await redis_state(redis)
    for body in (
        {"prompt": "p", "provider": "web", "duration": "9s"},
        {"prompt": "p", "keyframes": {"frame0": {"type": "generation", "id": "x"}}},
        {"prompt": "p", "model": "ray-9"},
        {"prompt": "p", "provider": "carrier-pigeon"},
    ):
        refused = await api.post("/api/generations/create", json=body, headers=auth(KEY_A))
        assert refused.status == 400, (body, await refused.text())
    assert await redis_state(redis) == before


async def test_a_provider_with_no_active_account_is_refused_and_stores_nothing(
    api: ApiClient, registry: AccountRegistry, redis: redis_asyncio.Redis
) -> None:
    """Only web accounts: a create that must run on an official account is a 503 at once."""
    await registry.add(account("web"))
    before = await redis_state(redis)
    refused = await api.post(
        "/api/generations/create", json={"prompt": "p", "model": "ray-2"}, headers=auth(KEY_A)
    )
    assert refused.status == 503 and (await refused.json())["code"] == "no_account_available"
    assert await redis_state(redis) == before


async def test_a_callback_with_an_unknown_token_is_404_and_a_known_one_enqueues_a_refresh(
    api: ApiClient, redis: redis_asyncio.Redis
) -> None:
    """The token is the only way in; what Luma sends is not read as state, only a refresh is queued."""
    unknown = await api.post("/api/upstream/callback/" + "x" * 32, json={"state": "completed"})
    assert unknown.status == 404 and (await unknown.json())["code"] == "not_found"
    await redis.set(keys.upstream_callback("t" * 32), "gen-1")
    with capture_logs() as logged:
        known = await api.post("/api/upstream/callback/" + "t" * 32, json={"state": "completed"})
    assert known.status == 200
    assert logged and "t" * 32 not in repr(logged), "the token is a credential: never logged"
    assert await redis.zscore(keys.ARQ_QUEUE, keys.refresh_job_id("gen-1")) is not None


async def test_kept_files_are_served_publicly_with_their_type(make_api: MakeApi, tmp_path: Any) -> None:
    """GET /files/<id>: the bytes and content type of a file the gateway keeps; 404 otherwise."""
    api = await make_api(files_dir=str(tmp_path))
    file_id = new_file_id("image/png")
    await DirectoryStore(str(tmp_path)).put(file_id, PNG, "image/png")
    served = await api.get(f"/files/{file_id}")
    assert served.status == 200 and served.content_type == "image/png" and await served.read() == PNG
    for missing in (new_file_id("image/png"), "..%2Fetc%2Fpasswd", "x.png"):
        assert (await api.get(f"/files/{missing}")).status == 404


async def test_extend_needs_a_completed_generation_of_the_caller(
    api: ApiClient, registry: AccountRegistry
) -> None:
    """A pending generation is 409 not_extendable; another holder's id is 404."""
    await registry.add(account("web"))
    created = await api.post("/api/generations/create", json={"prompt": "p"}, headers=auth(KEY_A))
    gen_id = (await created.json())["data"][0]["id"]
    pending = await api.post(f"/api/generations/{gen_id}/extend", json={}, headers=auth(KEY_A))
    assert pending.status == 409 and (await pending.json())["code"] == "not_extendable"
    foreign = await api.post(f"/api/generations/{gen_id}/extend", headers=auth(KEY_B))
    assert foreign.status == 404


async def test_the_luma_routes_answer_in_that_relays_shapes(
    api: ApiClient, registry: AccountRegistry
) -> None:
    """Bearer with our key; a bare pending generation (201); {"detail": {"reason", "code"}} errors."""
    await registry.add(account("web"))
    bearer = {"Authorization": f"Bearer {KEY_A}"}
    unauthorized = await api.post(
        "/luma/generations", json={"user_prompt": "p"}, headers={"Authorization": "Bearer nope"}
    )
    assert unauthorized.status == 401
    assert (await unauthorized.json()) == {
        "detail": {"reason": "unauthorized secret token", "code": "unauthorized"}
    }

    created = await api.post(
        "/luma/generations/", json={"user_prompt": "a fox", "aspect_ratio": "9:16"}, headers=bearer
    )
    assert created.status == 201, await created.text()
    generation = await created.json()
    assert (
        generation["state"] == "pending" and generation["prompt"] == "a fox" and generation["video"] is None
    )
    fetched = await api.get(f"/luma/generations/{generation['id']}", headers=bearer)
    assert (await fetched.json())["id"] == generation["id"]

    not_ready = await api.get(f"/luma/generations/{generation['id']}/download_video_url", headers=bearer)
    assert not_ready.status == 400 and (await not_ready.json())["detail"]["code"] == "video_not_ready"
    invalid = await api.post("/luma/generations", json={"aspect_ratio": "16:9"}, headers=bearer)
    assert invalid.status == 400 and "user_prompt" in (await invalid.json())["detail"]["reason"]
    other = await api.get(
        f"/luma/generations/{generation['id']}", headers={"Authorization": f"Bearer {KEY_B}"}
    )
    assert other.status == 404 and (await other.json())["detail"]["code"] == "not_found"
    usage = await (await api.get("/luma/subscription/usage", headers=bearer)).json()
    assert set(usage) >= {"consumed", "capacity", "available", "subscription", "plans"}
    me = await (await api.get("/luma/users/me", headers=bearer)).json()
    assert me["id"] and KEY_A not in str(me)
    bad_upload = await api.post(
        "/luma/generations/file_upload", json={"url": "data:image/png;base64,!!"}, headers=bearer
    )
    assert bad_upload.status == 400
