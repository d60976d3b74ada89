"""What every response shares: JSON errors, CORS, a request id, one log line, 503 while Redis is down."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from cli.redis_server import RedisServer
from tests.api.conftest import KEY_A, ApiClient, MakeApi, auth

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Secret-Key, X-Request-ID",
}


def assert_cors(headers: object) -> None:
    for name, value in CORS.items():
        assert headers[name] == value, name  # type: ignore[index]


@pytest.mark.parametrize(
    "path",
    [
        "/api/generations",
        "/api/generations/some-id",
        "/api/generations/usage",
        "/api/generations/create",
        "/api/generations/upload",
        "/api/admin/accounts",
        "/api/admin/accounts/main",
        "/api/anything/else",
    ],
)
async def test_preflight_is_answered_on_every_api_path_without_a_key(api: ApiClient, path: str) -> None:
    """A browser's OPTIONS preflight gets 204 and the CORS headers, no Secret-Key needed."""
    response = await api.options(
        path,
        headers={"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST"},
    )

    assert response.status == 204
    assert_cors(response.headers)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/generations", auth(KEY_A), 200),
        ("GET", "/api/generations", {}, 401),
        ("GET", "/api/nowhere", auth(KEY_A), 404),
        ("DELETE", "/api/generations", auth(KEY_A), 405),
    ],
)
async def test_every_response_carries_the_cors_headers(
    api: ApiClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    """Errors too: a browser can read a 401 or 404 as well as a 200."""
    response = await api.request(method, path, headers=headers)

    assert response.status == status
    assert_cors(response.headers)


@pytest.mark.parametrize("path", ["/api/nowhere", "/", "/api/generations/some-id/extra"])
async def test_an_unknown_route_is_a_json_not_found(api: ApiClient, path: str) -> None:
    """Routes that do not exist answer 404 {"message", "code": "not_found"}, not aiohttp's text page."""
    response = await api.get(path, headers=auth(KEY_A))

    assert response.status == 404
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["code"] == "not_found"
    assert path in body["message"]


async def test_a_wrong_method_is_a_json_method_not_allowed(api: ApiClient) -> None:
    """A known path with an unsupported method is 405 method_not_allowed, with Allow."""
    response = await api.delete("/api/generations", headers=auth(KEY_A))

    assert response.status == 405
    assert (await response.json())["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


async def test_the_usage_route_is_not_taken_for_a_generation_id(api: ApiClient) -> None:
    """/api/generations/usage is the usage endpoint, not the generation with id "usage"."""
    response = await api.get("/api/generations/usage", headers=auth(KEY_A))

    assert response.status == 200
    assert "capacity" in (await response.json())["data"]


async def test_a_request_id_is_echoed_bound_to_the_log_line_and_the_key_never_logged(api: ApiClient) -> None:
    """X-Request-ID is reused (or made up), returned, and on the request's log line with no Secret-Key."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        given = await api.get("/api/generations?limit=1", headers={**auth(KEY_A), "X-Request-ID": "req-123"})
        made_up = await api.get("/api/generations", headers=auth(KEY_A))
        unsafe = await api.get("/api/generations", headers={**auth(KEY_A), "X-Request-ID": "bad id {}"})

    assert given.headers["X-Request-ID"] == "req-123"
    assert len(made_up.headers["X-Request-ID"]) == 32
    assert unsafe.headers["X-Request-ID"] != "bad id {}"
    lines = [line for line in logs if line["event"] == "request"]
    assert [line["request_id"] for line in lines] == [
        "req-123",
        made_up.headers["X-Request-ID"],
        unsafe.headers["X-Request-ID"],
    ]
    assert lines[0]["method"] == "GET" and lines[0]["path"] == "/api/generations"
    assert lines[0]["status"] == 200 and isinstance(lines[0]["ms"], float)
    assert KEY_A not in repr(logs)


async def test_redis_down_is_a_json_503_and_the_api_recovers(
    make_api: MakeApi, fresh_redis_server: RedisServer
) -> None:
    """With Redis gone every endpoint says redis_unavailable (503); once it is back, requests work again."""
    api = await make_api(redis_url=fresh_redis_server.url)
    assert (await api.get("/api/generations", headers=auth(KEY_A))).status == 200

    fresh_redis_server.kill()
    with capture_logs() as logs:
        for method, path, body in [
            ("GET", "/api/generations", None),
            ("GET", "/api/generations/usage", None),
            ("POST", "/api/generations/create", {"prompt": "while down"}),
            ("GET", "/healthz", None),
        ]:
            response = await api.request(method, path, json=body, headers=auth(KEY_A))
            assert response.status == 503, path
            answer = await response.json()
            assert answer["code"] == "redis_unavailable"
            assert "Redis" in answer["message"]
            assert_cors(response.headers)
    assert any(line["event"] == "redis unavailable" for line in logs)

    fresh_redis_server.start()
    response = await api.post("/api/generations/create", json={"prompt": "back"}, headers=auth(KEY_A))
    assert response.status == 200


async def test_healthz_answers_without_a_key_while_redis_is_reachable(api: ApiClient) -> None:
    """Load balancers and the dev stack probe /healthz with no key; it says ok when Redis answers."""
    response = await api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
