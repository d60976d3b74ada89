"""The event log through HTTP with real workers: every transition recorded, in order, shown to its owner."""

from __future__ import annotations

import itertools

from redis.asyncio import Redis

from shared import keys
from shared.events import GenerationEvent, parse_entry
from shared.states import TRANSITIONS, FailureReason, Phase
from tests.e2e.helpers import create_many, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, TEST_KEYS, Stack, headers


async def log_of(redis: Redis, stream: str) -> list[GenerationEvent]:
    events = [
        parse_entry(entry_id.decode(), _decoded(fields)) for entry_id, fields in await redis.xrange(stream)
    ]
    return [event for event in events if isinstance(event, GenerationEvent)]


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in fields.items()}


@simulator_with(pending_seconds=0.05, processing_seconds=0.2, failure_rate=0.4, seed=7)
async def test_the_log_holds_every_transition_of_every_generation_in_order(stack: Stack) -> None:
    """A dozen run to the end, some failed upstream: each one's events: one legal path, alike everywhere."""
    stack.start_worker(stack.pool({"sim-1": 2, "sim-2": 2}))
    ids = await create_many(stack.api, [f"logged {n}" for n in range(12)])
    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert {record.state for record in found} == {"completed", "failed"}, "the seed gives both outcomes"

    everything = await log_of(stack.redis, keys.EVENTS)
    mine = await log_of(stack.redis, keys.owner_events(found[0].owner))
    for record in found:
        response = await stack.api.get(f"/api/generations/{record.id}/events", headers=headers())
        assert response.status == 200
        shown = (await response.json())["data"]
        path = [(event["from"], event["to"]) for event in shown]
        # A chain of allowed moves from nothing to where the record now is.
        assert path[0] == (None, Phase.WAITING.value)
        for (_, previous_to), (move_from, move_to) in itertools.pairwise(path):
            assert move_from == previous_to
            assert Phase(move_to) in TRANSITIONS[Phase(move_from)] and move_from != move_to
        assert path[-1][1] == record.phase.value
        assert [to for _, to in path][:3] == ["waiting", "claimed", "submitting"]
        if record.state == "failed":
            assert record.failure_reason == FailureReason.UPSTREAM_FAILED
            assert shown[-1]["failure_reason"] == FailureReason.UPSTREAM_FAILED
        # The same events, with the same ids and in the same order, in the whole log and the owner's stream.
        ids_here = [event["id"] for event in shown]
        assert [event.id for event in everything if event.generation_id == record.id] == ids_here
        assert [event.id for event in mine if event.generation_id == record.id] == ids_here
    assert [event.id for event in everything] == sorted(event.id for event in everything)


async def test_a_generations_events_are_its_owners_and_the_admins_only(stack: Stack) -> None:
    """Another key holder gets the same 404 as for an unknown id; the admin sees owner and account too."""
    [gen_id] = await create_many(stack.api, ["private history"])

    other = await stack.api.get(f"/api/generations/{gen_id}/events", headers=headers(TEST_KEYS[1]))
    unknown = await stack.api.get("/api/generations/no-such-id/events", headers=headers(TEST_KEYS[1]))
    assert other.status == unknown.status == 404
    assert (await other.json())["code"] == (await unknown.json())["code"] == "not_found"

    admin = await stack.api.get(f"/api/generations/{gen_id}/events", headers=headers(ADMIN_KEY))
    [created] = (await admin.json())["data"]
    assert created["to"] == "waiting" and created["owner"] and "account" in created
    owner = await stack.api.get(f"/api/generations/{gen_id}/events", headers=headers())
    [seen] = (await owner.json())["data"]
    assert "owner" not in seen and seen["id"] == created["id"]


@simulator_with(pending_seconds=0.05, processing_seconds=0.2)
async def test_a_401_marks_the_account_expired_with_its_reason_and_time(stack: Stack) -> None:
    """A 401: the one health policy marks the account expired; the admin API says why and since when."""
    stack.start_worker(stack.pool({"sim-1": 1, "sim-2": 1}))
    stack.simulator.state.expire_account("sim-1")
    ids = await create_many(stack.api, [f"after expiry {n}" for n in range(4)])

    async def expired() -> bool:
        response = await stack.api.get("/api/admin/accounts", headers=headers(ADMIN_KEY))
        accounts = {account["name"]: account for account in (await response.json())["data"]}
        return bool(accounts.get("sim-1", {}).get("state") == "expired")

    await wait_until(expired, within=30, interval=0.1)
    found = await wait_all_terminal(stack.redis, ids, within=60)
    assert [record.state for record in found] == ["completed"] * 4, "the healthy account took the work"
    assert {record.account for record in found} == {"sim-2"}

    response = await stack.api.get("/api/admin/accounts", headers=headers(ADMIN_KEY))
    [account] = [item for item in (await response.json())["data"] if item["name"] == "sim-1"]
    assert "401" in account["state_reason"]
    assert account["state_at"] is not None and account["state_at"] > found[0].created_ts - 5
    events = await stack.api.get("/api/admin/events?limit=1000", headers=headers(ADMIN_KEY))
    changes = [event for event in (await events.json())["data"] if event["kind"] == "account"]
    assert [(event["account"], event["from"], event["to"]) for event in changes] == [
        ("sim-1", "active", "expired")
    ]
