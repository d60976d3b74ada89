"""Nothing waits forever: an upstream that stalls ends a generation with an explicit reason."""

from __future__ import annotations

from shared.models import FailureReason
from tests.e2e.helpers import create_many, records, wait_all_terminal
from tests.fixtures.simulator import simulator_with, wait_until
from tests.fixtures.stack import Stack, headers


@simulator_with(pending_seconds=0.02, processing_seconds=0.1, missing_url_seconds=0.6)
async def test_completed_is_shown_only_once_the_video_url_is_there(stack: Stack) -> None:
    """While Luma says completed without a URL, callers see processing; then completed with the URL."""
    stack.start_worker(stack.pool({"sim-1": 1}))
    [gen_id] = await create_many(stack.api, ["url comes late"])
    shown: list[tuple[str, bool]] = []

    async def completed() -> bool:
        response = await stack.api.get(f"/api/generations/{gen_id}", headers=headers())
        data = (await response.json())["data"]
        shown.append((data["state"], bool(data["video"] and data["video"].get("url"))))
        return bool(data["state"] == "completed")

    await wait_until(completed, within=20, interval=0.02)
    assert all(has_url for state, has_url in shown if state == "completed")
    [record] = await records(stack.redis, [gen_id])
    assert record.completed_without_video_ts is not None, "the worker should have seen the URL-less window"


@simulator_with(pending_seconds=0.02, processing_seconds=0.1, missing_url_seconds=60)
async def test_completed_without_a_video_for_too_long_fails_with_its_reason(stack: Stack) -> None:
    """A completion that never gets its URL ends failed with completed_without_video."""
    stack.start_worker(stack.pool({"sim-1": 1}), MISSING_VIDEO_DEADLINE_SECONDS=1)
    ids = await create_many(stack.api, ["never a url"])

    [record] = await wait_all_terminal(stack.redis, ids, within=20)
    assert record.state == "failed"
    assert record.failure_reason == FailureReason.COMPLETED_WITHOUT_VIDEO


@simulator_with(pending_seconds=60, processing_seconds=0.1)
async def test_a_generation_pending_upstream_past_the_deadline_fails_with_its_reason(stack: Stack) -> None:
    """Luma's own queue holding a generation past the deadline ends it failed, and frees the slot."""
    stack.start_worker(stack.pool({"sim-1": 1}), UPSTREAM_PENDING_DEADLINE_SECONDS=1)
    ids = await create_many(stack.api, ["stuck in luma's queue", "behind it"])

    found = await wait_all_terminal(stack.redis, ids, within=30)
    assert [record.failure_reason for record in found] == [FailureReason.UPSTREAM_PENDING_TIMEOUT] * 2
    assert all(record.failure_message for record in found)
