"""Hostile and careless callers against the real api process: malformed HTTP (raw sockets where a
client library would refuse to send it), bad bodies, bad images and bad admin input.

Each is answered with a JSON 4xx (never a 5xx, never aiohttp's text page), stores nothing, and no
answer or log line, at INFO or DEBUG, carries the key or the cookie the request was sent with.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio

from cli.redis_server import RedisServer
from tests.api.conftest import redis_state
from tests.fixtures.api_process import ApiProcess, ServeApi, exchange, read_answer, start_api
from tests.images import JPEG, PNG

KEY = "HOSTILE-KEY-7f3a91"
ADMIN = "HOSTILE-ADMIN-22c1d0"
COOKIE = "HOSTILE-COOKIE-91bd5e"
SECRETS = (KEY, ADMIN, COOKIE)

AUTH = f"Secret-Key: {KEY}\r\nCookie: access_token={COOKIE}\r\n".encode()
ADMIN_AUTH = f"Secret-Key: {ADMIN}\r\nCookie: access_token={COOKIE}\r\n".encode()


def request(method: str, path: str, *headers: str, body: bytes = b"", auth: bytes = AUTH) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: api.test", *headers]
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n").encode() + auth + b"\r\n" + body


def json_create(body: bytes, content_type: str | None = "application/json") -> bytes:
    headers = [f"Content-Type: {content_type}"] if content_type else []
    return request("POST", "/api/generations/create", *headers, body=body)


def admin_add(account: dict[str, object]) -> bytes:
    body = json.dumps(account).encode()
    return request(
        "POST", "/api/admin/accounts", "Content-Type: application/json", body=body, auth=ADMIN_AUTH
    )


def upload(data: bytes, filename: str = "cat.png") -> bytes:
    boundary = "hostileboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return request(
        "POST",
        "/api/generations/upload",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        body=body,
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


# (name, raw request, expected status, expected code or None for "any code")
CASES: list[tuple[str, bytes, int, str | None]] = [
    ("unknown method", request("FOO", "/api/generations"), 400, "bad_request"),
    ("NUL in a header", request("GET", "/api/generations", f"X-Note: a\x00b {KEY}"), 400, "bad_request"),
    (
        "header over 8190 bytes",
        request("GET", "/api/generations", "X-Long: " + KEY * 800),
        400,
        "bad_request",
    ),
    (
        "200 headers",
        request("GET", "/api/generations", *[f"X-{i}: {KEY}" for i in range(200)]),
        400,
        "bad_request",
    ),
    ("request line over 8190 bytes", request("GET", "/api/" + "a" * 9000), 400, "bad_request"),
    ("folded header", request("GET", "/api/generations", "X-Note: a", f" {KEY}"), 400, "bad_request"),
    ("space before a colon", request("GET", "/api/generations", f"Secret-Key : {KEY}"), 400, "bad_request"),
    ("non-ASCII header name", request("GET", "/api/generations", f"X-Ünï: {KEY}"), 400, "bad_request"),
    (
        "bad chunk size",
        request(
            "POST",
            "/api/generations/create",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
            body=f"zz\r\n{KEY}\r\n0\r\n\r\n".encode(),
        ),
        400,
        "bad_request",
    ),
    (
        "Content-Length and chunked",
        request(
            "POST",
            "/api/generations/create",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
        "bad_request",
    ),
    (
        "two Content-Lengths",
        request("POST", "/api/generations/create", "Content-Length: 5", "Content-Length: 6", body=b"{}{}{}"),
        400,
        "bad_request",
    ),
    (
        "Content-Length not a number",
        request("POST", "/api/generations/create", "Content-Length: abc"),
        400,
        "bad_request",
    ),
    (
        "TLS hello on the HTTP port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + KEY.encode(),
        400,
        "bad_request",
    ),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request"),
    (
        "create as text/plain",
        json_create(b'{"prompt": "a fox"}', "text/plain"),
        415,
        "unsupported_media_type",
    ),
    ("create without Content-Type", json_create(b'{"prompt": "a fox"}', None), 415, "unsupported_media_type"),
    ("create of 10 MB", json_create(b'{"prompt": "' + b"x" * 10_000_000 + b'"}'), 413, "too_large"),
    ("create nested 30,000 deep", json_create(b"[" * 30_000 + b"]" * 30_000), 400, "invalid_json"),
    ("create not UTF-8", json_create(b'{"prompt": "\xff\xfe"}'), 400, "invalid_json"),
    ("create with a NUL query", request("GET", "/api/generations?limit=%00"), 400, "invalid_query"),
    ("an unknown route", request("GET", "/api/nowhere"), 404, "not_found"),
    ("a wrong method", request("DELETE", "/api/generations"), 405, "method_not_allowed"),
    (
        "a PNG header then HTML",
        upload(PNG[:33] + b"<html><body>" + KEY.encode() + b"</body></html>"),
        415,
        "not_an_image",
    ),
    ("a truncated JPEG", upload(JPEG[: len(JPEG) // 2], "cat.jpg"), 415, "not_an_image"),
    ("an SVG", upload(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "cat.svg"), 415, "not_an_image"),
    ("a decompression bomb", upload(png_claiming(100_000, 100_000)), 413, "image_too_large"),
    ("an image over UPLOAD_MAX_PIXELS", upload(png_claiming(8_000, 8_000)), 413, "image_too_large"),
    (
        "admin cookie with CR/LF",
        admin_add({"name": "evil", "cookie": f"a={COOKIE}\r\nX-Injected: 1"}),
        400,
        "invalid_request",
    ),
    (
        "admin cookie with NUL",
        admin_add({"name": "evil", "cookie": f"a={COOKIE}\x00"}),
        400,
        "invalid_request",
    ),
    (
        "admin base_url file://",
        admin_add({"name": "evil", "cookie": COOKIE, "base_url": "file:///etc/passwd"}),
        400,
        "invalid_request",
    ),
    (
        "admin base_url javascript:",
        admin_add({"name": "evil", "cookie": COOKIE, "base_url": "javascript:x"}),
        400,
        "invalid_request",
    ),
    (
        "admin base_url with no host",
        admin_add({"name": "evil", "cookie": COOKIE, "base_url": "https://"}),
        400,
        "invalid_request",
    ),
]


@pytest.fixture(scope="module")
def hostile_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One api for the module (starting one per case would take most of the time)."""
    api = start_api(redis_server.url, tmp_path_factory.mktemp("hostile"), secret_key=KEY, admin_key=ADMIN)
    yield api
    api.kill()


@pytest.mark.parametrize(("name", "raw", "status", "code"), CASES, ids=[case[0] for case in CASES])
async def test_a_hostile_request_is_a_json_4xx_that_stores_nothing(
    hostile_api: ApiProcess, redis: redis_asyncio.Redis, name: str, raw: bytes, status: int, code: str | None
) -> None:
    """Malformed HTTP, a bad body, image or admin value: the status and code, as JSON, and no change."""
    before = await redis_state(redis)

    answer = await exchange(hostile_api.port, raw)

    assert (answer.status, answer.headers["content-type"]) == (status, "application/json; charset=utf-8"), (
        answer.raw[:300]
    )
    body = answer.json()
    assert set(body) >= {"message", "code"}
    assert code is None or body["code"] == code, body
    assert not any(secret.encode() in answer.raw for secret in SECRETS), answer.raw[:300]
    assert await redis_state(redis) == before


async def test_an_oversized_create_is_refused_from_its_length_before_the_body_is_sent(
    hostile_api: ApiProcess,
) -> None:
    """A 10 MB Content-Length gets its 413 while the body has not even been sent."""
    headers_only = request(
        "POST", "/api/generations/create", "Content-Type: application/json", "Content-Length: 10000000"
    )

    answer = await exchange(hostile_api.port, headers_only)

    assert (answer.status, answer.json()["code"]) == (413, "too_large")


async def test_an_oversized_chunked_create_is_refused_once_it_passes_the_limit(
    hostile_api: ApiProcess,
) -> None:
    """Without a length, the body is read only until it passes CREATE_MAX_BODY_BYTES, then 413."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile_api.port)
    try:
        writer.write(
            request(
                "POST",
                "/api/generations/create",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
        )
        chunk = b'{"prompt": "' + b"x" * 70_000
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")  # past 64 KiB, and no end sent
        await writer.drain()
        answer = await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()

    assert (answer.status, answer.json()["code"]) == (413, "too_large")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_no_key_or_cookie_reaches_a_log_or_an_answer(
    serve_api: ServeApi, tmp_path: Path, level: str
) -> None:
    """Every hostile request above, plus slow headers and a slow body, carrying a key and a cookie:
    neither is in any answer or anywhere in the api's log, at INFO and at DEBUG."""
    api = serve_api(
        secret_key=KEY,
        admin_key=ADMIN,
        log_level=level,
        api_header_timeout_seconds=0.5,
        api_body_timeout_seconds=0.5,
    )
    answers = [await exchange(api.port, raw) for _, raw, _, _ in CASES]
    # Headers that never end, and a body that never ends, each with the key in it.
    answers.append(
        await exchange(api.port, f"GET /api/generations HTTP/1.1\r\nSecret-Key: {KEY}\r\n".encode())
    )
    answers.append(
        await exchange(api.port, json_create(b"{").replace(b"Content-Length: 1", b"Content-Length: 100"))
    )
    api.stop()

    assert [answer.status for answer in answers[-2:]] == [408, 408]
    assert {answer.json()["code"] for answer in answers[-2:]} == {"header_timeout", "body_timeout"}
    for answer in answers:
        assert not any(secret.encode() in answer.raw for secret in SECRETS), answer.raw[:300]
    log = api.log()
    assert "malformed request refused" in log  # the parser errors were logged, by kind
    assert not [secret for secret in SECRETS if secret in log]
    assert "Traceback" not in log


async def test_a_batch_has_its_own_larger_body_limit(hostile_api: ApiProcess) -> None:
    """A body past CREATE_MAX_BODY_BYTES is refused for a create but taken for a batch."""
    items = [{"prompt": f"{n} " + "a fox in the snow " * 30} for n in range(200)]
    body = json.dumps({"items": items}).encode()
    assert 64 * 1024 < len(body) < 8 * 1024 * 1024

    batch = await exchange(
        hostile_api.port,
        request("POST", "/api/generations/batch", "Content-Type: application/json", body=body),
    )
    create = await exchange(hostile_api.port, json_create(body))

    assert batch.status == 200, batch.raw[:300]
    assert len(batch.json()["data"]) == 200
    assert (create.status, create.json()["code"]) == (413, "too_large")
