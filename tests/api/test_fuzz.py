"""Schemathesis against the live api (its own process, a real Redis): every operation of
/openapi.json, with valid keys, must give no 5xx it does not document, only documented statuses
and content types, and answers that match their schemas.

Bounded to FUZZ_EXAMPLES examples per operation (default 8) so the suite stays fast; `make fuzz`
runs a deeper pass (FUZZ_EXAMPLES=200).

Two operations are left out, for what they are rather than what they answer:
`GET /api/generations/events` is a stream that never ends by itself (tests/api/test_event_stream.py
covers it), and `POST /luma/generations/file_upload` fetches the URL it is given, which would send
the fuzzer's made-up URLs out of this machine (tests/api/test_upload.py covers it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import build_document
from cli.redis_server import RedisServer, start_on_a_free_port
from shared.accounts import AccountRegistry
from shared.settings import AccountConfig, Settings
from tests.fixtures.api_process import ApiProcess, start_api

HOLDER_KEY = "fuzzing-holder-key"
ADMIN_KEY = "fuzzing-admin-key"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# No worker runs, so nothing is ever sent to the accounts' base URL (a closed port, in any case).
NOWHERE = "http://127.0.0.1:9"
UPLOAD = "/api/generations/upload"
NOT_FUZZED = ("/api/generations/events", "/luma/generations/file_upload")


async def _fill_pool(redis_url: str) -> None:
    """A web and an official account, so that creates of either kind are accepted."""
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await AccountRegistry(client).sync_from_settings(
            [
                AccountConfig(name="fuzz-web", cookie="access_token=fuzz", base_url=NOWHERE),
                AccountConfig(name="fuzz-official", kind="official", api_key="fuzz-key", base_url=NOWHERE),
            ]
        )
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """The api on a private Redis with one account in the pool, so creates are accepted."""
    directory = tmp_path_factory.mktemp("fuzz")
    server = start_on_a_free_port(lambda: RedisServer(directory / "redis"))
    asyncio.run(_fill_pool(server.url))
    api = start_api(
        server.url,
        directory,
        secret_key=HOLDER_KEY,
        admin_key=ADMIN_KEY,
        # Nothing the fuzzer sends may make this machine resolve or reach a made-up host.
        webhook_allow_private_networks="true",
        upload_timeout_seconds="1",
        max_queue_depth="100000",
    )
    yield api
    api.kill()
    server.stop()


def fuzz_settings() -> Settings:
    """The settings the fuzzed api runs with, as far as its document depends on them."""
    return Settings(_env_file=None, secret_key=[HOLDER_KEY], admin_key=ADMIN_KEY)


# The document is built here, at collection, from the same code the api serves it with (so no api
# must run before the tests are collected); test_openapi.py checks the served one is the same.
schema = schemathesis.openapi.from_dict(build_document(fuzz_settings())).exclude(path=list(NOT_FUZZED))


def credentials(path: str) -> dict[str, str]:
    """The valid key each kind of route takes."""
    if path.startswith("/luma/"):
        return {"Authorization": f"Bearer {HOLDER_KEY}"}
    if path.startswith("/api/admin/"):
        return {"Secret-Key": ADMIN_KEY}
    return {"Secret-Key": HOLDER_KEY}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_conforms_to_its_schema(case: Any, fuzzed_api: ApiProcess) -> None:
    """Every answer of every operation is documented and shaped as its schema says."""
    headers = credentials(case.operation.path)
    if case.operation.path != UPLOAD:
        case.call_and_validate(base_url=fuzzed_api.url, headers=headers, checks=CHECKS, timeout=15)
        return
    # No worker runs here (it would act on the fuzzer's made-up URLs), so an image the api
    # accepted waits for one in vain: the documented 504 upload_timeout. Any other 5xx fails.
    response = case.call(base_url=fuzzed_api.url, headers=headers, timeout=15)
    case.validate_response(response, checks=CHECKS[1:])
    assert response.status_code < 500 or response.json()["code"] == "upload_timeout", response.text
