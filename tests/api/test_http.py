"""What every response shares: JSON errors, CORS by configuration, a request id, one log line, 503s."""

from __future__ import annotations

import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from cli.redis_server import RedisServer
from shared.settings import Settings
from tests.api.conftest import KEY_A, ApiClient, MakeApi, auth

APP_ORIGIN = "https://app.example.test"
PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Secret-Key, X-Request-ID",
}


def preflight_headers(origin: str = APP_ORIGIN) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST"}


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
async def test_preflight_from_an_allowed_origin_is_answered_on_every_api_path_without_a_key(
    make_api: MakeApi, path: str
) -> None:
    """With CORS_ORIGINS naming the origin, its OPTIONS preflight gets 204 and the CORS headers."""
    api = await make_api(cors_origins=[APP_ORIGIN])

    response = await api.options(path, headers=preflight_headers())

    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    for name, value in PREFLIGHT.items():
        assert response.headers[name] == value, name


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/generations", auth(KEY_A), 200),
        ("GET", "/api/generations", {}, 401),
        ("GET", "/api/nowhere", auth(KEY_A), 404),
        ("DELETE", "/api/generations", auth(KEY_A), 405),
    ],
)
async def test_every_response_to_an_allowed_origin_carries_the_cors_headers(
    make_api: MakeApi, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    """Errors too: a browser on an allowed origin can read a 401 or 404 as well as a 200."""
    api = await make_api(cors_origins=[APP_ORIGIN])

    response = await api.request(method, path, headers={**headers, "Origin": APP_ORIGIN})

    assert response.status == status
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in response.headers.getall("Vary")


async def test_by_default_no_origin_is_allowed(api: ApiClient) -> None:
    """Without CORS_ORIGINS a preflight is 403 origin_not_allowed and no answer allows an origin."""
    preflight = await api.options("/api/generations", headers=preflight_headers())
    answer = await api.get("/api/generations", headers={**auth(KEY_A), "Origin": APP_ORIGIN})

    assert preflight.status == 403
    assert (await preflight.json())["code"] == "origin_not_allowed"
    assert answer.status == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_an_origin_not_listed_is_not_allowed(make_api: MakeApi) -> None:
    """CORS_ORIGINS is a list, not a pattern: another origin gets neither a preflight nor the header."""
    api = await make_api(cors_origins=[APP_ORIGIN])
    elsewhere = "https://evil.example.test"

    preflight = await api.options("/api/generations", headers=preflight_headers(elsewhere))
    answer = await api.get("/api/generations", headers={**auth(KEY_A), "Origin": elsewhere})

    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in answer.headers


async def test_a_star_allows_every_origin(make_api: MakeApi) -> None:
    """CORS_ORIGINS=* answers any origin with `*`, the old behaviour, only when an operator asks."""
    api = await make_api(cors_origins=["*"])

    preflight = await api.options("/api/generations", headers=preflight_headers("https://any.example"))
    answer = await api.get("/api/generations", headers={**auth(KEY_A), "Origin": "https://any.example"})

    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_are_read_comma_separated_and_checked() -> None:
    """CORS_ORIGINS takes origins only (no path), normalized to lower case without a trailing slash."""
    settings = Settings(_env_file=None, cors_origins="https://App.example.test/, http://localhost:3000")  # type: ignore[arg-type]
    assert settings.cors_origins == ["https://app.example.test", "http://localhost:3000"]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, cors_origins="https://app.example.test/some/path")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/api/nowhere", "/nowhere", "/api/generations/some-id/extra"])
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
    assert any(line["event"] == "redis unavailable" for line in logs)

    fresh_redis_server.start()
    response = await api.post("/api/generations/create", json={"prompt": "back"}, headers=auth(KEY_A))
    assert response.status == 200


async def test_healthz_answers_without_a_key_while_redis_is_reachable(api: ApiClient) -> None:
    """Load balancers and the dev stack probe /healthz with no key; it says ok when Redis answers."""
    response = await api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
