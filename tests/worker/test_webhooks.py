"""One webhook attempt: signed as Standard Webhooks says, never to a private address, no redirect followed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cli.ports import free_port
from shared.events import Event, parse_entry
from shared.models import CreateRequest, GenerationRecord
from shared.states import Phase
from shared.webhooks import Delivery, new_secret
from tests.fixtures.receiver import Hit, Receiver
from worker.webhooks import delivery_for, post_webhook, sign, signed_headers, webhook_session

BODY = b'{"type":"generation.completed","timestamp":"2024-12-04T01:20:00.123Z","data":{"id":"g"}}'


def delivery_to(url: str) -> Delivery:
    return Delivery.model_validate(
        {
            "webhook_id": "msg_1733275200123-0",
            "generation_id": "g",
            "owner": "alice",
            "type": "generation.completed",
            "timestamp": "2024-12-04T01:20:00.123Z",
            "url": url,
            "body": BODY.decode(),
        }
    )


def test_our_signature_is_the_one_standardwebhooks_computes_and_verifies() -> None:
    """The few lines of hmac/base64 agree with the reference library, and it verifies our headers."""
    secret = new_secret()
    timestamp = 1_733_275_200
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    assert sign(secret, "msg_1-0", timestamp, BODY) == Webhook(secret).sign("msg_1-0", moment, BODY)


def test_a_receiver_verifies_a_fresh_attempt_and_refuses_another_secret_or_body() -> None:
    """standardwebhooks accepts our headers as sent; a wrong secret or a changed body fails."""
    secret = new_secret()
    headers = signed_headers(secret, "msg_1-0", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers)["type"] == "generation.completed"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"completed", b"failed"), headers)


def test_only_a_public_state_change_of_a_generation_with_a_callback_makes_a_delivery() -> None:
    """processing/completed/failed with a callback_url: a webhook; pending, or no callback_url: none."""
    record = GenerationRecord.new("alice", CreateRequest(prompt="p", callback_url="https://example.com/h"))
    done = record.model_copy(update={"phase": Phase.COMPLETED})
    quiet = done.model_copy(update={"callback_url": None})

    def event(entry: str, of: GenerationRecord, prev: str, state: str) -> Event:
        """The entry as the store's Lua writes it: string fields, empty ones meaning absent."""
        fields = {"kind": "generation", "generation_id": of.id, "owner": "alice", "from": ""}
        fields |= {"to": of.phase.value, "prev_state": prev, "state": state, "at": "1733275200123"}
        return parse_entry(entry, fields | {"doc": of.model_dump_json()})

    made = delivery_for(event("5-0", done, "processing", "completed"))
    assert made is not None and made.webhook_id == "msg_5-0" and made.type == "generation.completed"
    assert made.timestamp == "2024-12-04T01:20:00.123Z"
    assert delivery_for(event("1-0", record, "", "pending")) is None
    assert delivery_for(event("6-0", quiet, "processing", "completed")) is None


class AnswersLoopback(AbstractResolver):
    """A name server that answers 127.0.0.1 for every name: what a hostile DNS change looks like."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


async def test_a_name_that_resolves_to_loopback_at_delivery_time_is_never_connected_to() -> None:
    """Checked on the address connected to: a name answered with 127.0.0.1 fails before any connection."""
    resolver = AnswersLoopback()
    url = f"http://hooks.example.test:{free_port()}/hook"
    async with webhook_session(allow_private=False, resolver=resolver) as session:
        _, status, error = await post_webhook(
            session, delivery_to(url), new_secret(), timeout_seconds=5, allow_private=False
        )
    assert resolver.asked == ["hooks.example.test"]
    assert status is None and error is not None
    assert "must not connect to" in error and "Connect call failed" not in error


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "169.254.169.254", "10.1.2.3", "0.0.0.0"]
)
async def test_an_ip_literal_in_a_private_network_is_refused_before_connecting(host: str) -> None:
    """aiohttp does not resolve IP literals, so they are checked on their own, and nothing is sent."""
    async with webhook_session(allow_private=False) as session:
        _, status, error = await post_webhook(
            session, delivery_to(f"http://{host}:{free_port()}/hook"), new_secret(), timeout_seconds=5,
            allow_private=False,
        )  # fmt: skip
    assert status is None and error is not None and error.startswith("not connected:")
    assert "must not connect to" in error


@pytest_asyncio.fixture
async def local_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with webhook_session(allow_private=True) as session:
        yield session


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    receiver: Receiver, local_session: aiohttp.ClientSession
) -> None:
    """A 302 is recorded as the attempt's status; the place it points to is never asked."""
    receiver.respond = lambda hit, nth: 302 if hit.path == "/hook" else 200
    _, status, error = await post_webhook(
        local_session, delivery_to(receiver.url()), new_secret(), timeout_seconds=5, allow_private=True
    )
    assert (status, error) == (302, None)
    assert [hit.path for hit in receiver.hits] == ["/hook"]


async def test_a_receiver_that_does_not_answer_in_time_is_a_timeout(
    receiver: Receiver, local_session: aiohttp.ClientSession
) -> None:
    """WEBHOOK_TIMEOUT_SECONDS bounds an attempt; the error says so."""
    release = asyncio.Event()

    async def hold(hit: Hit, nth: int) -> int:
        await release.wait()
        return 200

    receiver.respond = hold
    try:
        _, status, error = await post_webhook(
            local_session, delivery_to(receiver.url()), new_secret(), timeout_seconds=0.3, allow_private=True
        )
    finally:
        release.set()
    assert status is None and error == "no answer within 0.3 s"


async def test_the_attempt_carries_the_body_and_headers_a_receiver_needs(
    receiver: Receiver, local_session: aiohttp.ClientSession
) -> None:
    """application/json, the exact body, and webhook-id / -timestamp / -signature that verify."""
    secret = new_secret()
    _, status, _ = await post_webhook(
        local_session, delivery_to(receiver.url()), secret, timeout_seconds=5, allow_private=True
    )
    assert status == 200
    [hit] = receiver.hits
    assert hit.body == BODY and hit.headers["content-type"] == "application/json"
    assert hit.webhook_id == "msg_1733275200123-0"
    Webhook(secret).verify(hit.body, hit.headers)
