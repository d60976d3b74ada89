"""Web and official accounts in one pool, with real worker processes: limits, money, routing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.states import FailureReason
from simulator.config import AccountSpec, OfficialAccountSpec
from simulator.official import PREFIX
from simulator.testing import RunningSimulator
from tests.e2e.helpers import creates_per_prompt, records, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import ADMIN_KEY, WorkerProcess, headers

OFFICIAL_KEY = "luma-official-key-test-0001"
WEB = [AccountSpec(name="sim-1", token="sim-token-1")]


def mixed_pool(
    simulator: RunningSimulator, *, web_limit: int = 3, official: dict[str, Any] | None = None
) -> str:
    """LUMA_ACCOUNTS with the simulator's web account sim-1 and official account api-1."""
    return json.dumps(
        [
            {
                "name": "sim-1",
                "cookie": f"access_token={simulator.state.account('sim-1').token}",
                "base_url": simulator.url,
                "max_concurrency": web_limit,
            },
            {
                "name": "api-1",
                "kind": "official",
                "api_key": simulator.state.official_account("api-1").key,
                "base_url": simulator.url + PREFIX,
                **(official or {}),
            },
        ]
    )


async def batch(client: TestClient[Any, Any], items: list[dict[str, Any]]) -> list[str]:
    response = await client.post("/api/generations/batch", json={"items": items}, headers=headers())
    assert response.status == 200, await response.text()
    return [generation["id"] for generation in (await response.json())["data"]]


@simulator_with(
    accounts=WEB,
    official_accounts=[OfficialAccountSpec(name="api-1", key=OFFICIAL_KEY, credits_cents=5000)],
    pending_seconds=0.02,
    processing_seconds=0.3,
)
async def test_a_mixed_batch_keeps_both_kinds_busy_within_their_limits(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """100 generations, some official-only, some web-only, most either: both accounts work, the
    official one within 10 concurrent and 20 creates a minute by the simulator's own log, one
    create each, and its credit never overdrawn."""
    pool = mixed_pool(simulator)
    start_worker(pool)
    start_worker(pool)
    items = (
        [{"prompt": f"official {n}", "model": "ray-flash-2", "resolution": "540p"} for n in range(10)]
        + [{"prompt": f"web {n}", "provider": "web"} for n in range(10)]
        + [{"prompt": f"official {n}", "model": "ray-flash-2", "resolution": "540p"} for n in range(10, 20)]
        + [{"prompt": f"either {n}"} for n in range(70)]
    )
    ids = await batch(api_client, items)

    done = await wait_all_terminal(redis, ids, within=120)
    assert [record.state for record in done] == ["completed"] * 100
    assert all(count == 1 for count in creates_per_prompt(simulator).values())
    assert len(creates_per_prompt(simulator)) == 100
    by_prompt = {record.prompt: record.account for record in done}
    assert {by_prompt[f"official {n}"] for n in range(20)} == {"api-1"}
    assert {by_prompt[f"web {n}"] for n in range(10)} == {"sim-1"}
    stats = simulator.state.account_stats()
    official, web = stats["api-1"], stats["sim-1"]
    assert official["creates"] >= 20 and web["creates"] >= 10, (official, web)
    assert official["max_in_flight"] <= 10 and official["max_creates_in_a_minute"] <= 20, official
    # The gateway kept to the limits itself: the simulator never had to refuse.
    assert official["rejected_rate_limited"] == official["rejected_concurrency"] == 0, official
    assert official["rejected_no_credits"] == 0 and official["credits_cents"] >= 0
    assert web["max_in_flight"] <= 3
    creates = [r for r in simulator.state.requests(method="POST") if r.path.startswith(PREFIX)]
    assert Counter(r.status for r in creates) == {201: official["creates"]}


@simulator_with(
    accounts=WEB,
    official_accounts=[OfficialAccountSpec(name="api-1", key=OFFICIAL_KEY, credits_cents=100)],
    pending_seconds=0.02,
    processing_seconds=0.2,
)
async def test_an_official_balance_pays_for_what_it_can_and_the_rest_fails_without_a_create(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """1 dollar of credit, 40-cent creates: two are made, the others end no_account, never a 402."""
    start_worker(mixed_pool(simulator), NO_ACCOUNT_DEADLINE_SECONDS=2)
    ids = await batch(
        api_client, [{"prompt": f"dear {n}", "model": "ray-2", "resolution": "540p"} for n in range(6)]
    )
    ids += await batch(api_client, [{"prompt": f"cheap {n}"} for n in range(4)])

    done = await wait_all_terminal(redis, ids, within=60)
    states = Counter((record.state, record.failure_reason) for record in done)
    assert states == {("completed", None): 6, ("failed", FailureReason.NO_ACCOUNT): 4}, states
    official = simulator.state.account_stats()["api-1"]
    assert official["creates"] == 2 and official["credits_cents"] == 20
    assert official["rejected_no_credits"] == 0
    assert {record.account for record in done if record.prompt.startswith("cheap")} == {"sim-1"}


@simulator_with(
    accounts=WEB,
    official_accounts=[OfficialAccountSpec(name="api-1", key=OFFICIAL_KEY, credits_cents=5000)],
    pending_seconds=0.05,
    processing_seconds=1.0,
)
async def test_work_fails_over_to_the_other_kind_before_its_create_and_never_after(
    api_client: TestClient[Any, Any],
    simulator: RunningSimulator,
    start_worker: Callable[..., WorkerProcess],
    redis: Redis,
) -> None:
    """The web account expires mid-run: what it already made is followed there to the end, what
    had not reached it yet runs on the official account; nothing is created twice."""
    start_worker(mixed_pool(simulator, web_limit=2, official={"max_concurrency": 1}))
    ids = await batch(api_client, [{"prompt": f"failover {n}"} for n in range(8)])

    async def web_running() -> bool:
        return len(simulator.state.generation_reports("sim-1")) >= 2

    await wait_until(web_running, within=20)
    simulator.state.expire_account("sim-1")
    on_web_before = {report["prompt"] for report in simulator.state.generation_reports("sim-1")}

    async def the_rest_finished() -> bool:
        found = await records(redis, ids)
        return all(record.terminal or record.prompt in on_web_before for record in found)

    await wait_until(the_rest_finished, within=60, interval=0.2)
    # An operator renews the web session; what it made is read again and followed to the end.
    simulator.state.set_token("sim-1", "sim-token-1-renewed")
    renewed = await api_client.patch(
        "/api/admin/accounts/sim-1", json={"cookie": "sim-token-1-renewed"}, headers=headers(ADMIN_KEY)
    )
    assert renewed.status == 200, await renewed.text()

    done = await wait_all_terminal(redis, ids, within=60)
    assert [record.state for record in done] == ["completed"] * 8
    assert all(count == 1 for count in creates_per_prompt(simulator).values())
    assert len(creates_per_prompt(simulator)) == 8
    by_prompt = {record.prompt: record for record in done}
    assert {by_prompt[prompt].account for prompt in on_web_before} == {"sim-1"}
    rest = [record for record in done if record.prompt not in on_web_before]
    assert rest and {record.account for record in rest} == {"api-1"}
