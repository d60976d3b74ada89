"""The dispatcher: hands waiting generations to free slots, woken by new work or a freed lease.

Every worker runs one; the claim is atomic in Redis, so any number of them can run at once. A
waiting generation holds no arq job and no worker slot: it is only an entry in its owner's queue
until a claim turns it into a submit job.
"""

from __future__ import annotations

import asyncio

import structlog

from shared import keys
from shared.queue import SUBMIT_JOB
from worker.context import Deps
from worker.loops import run_loop
from worker.scheduler import Claim

log = structlog.get_logger(__name__)


async def dispatch_once(deps: Deps) -> int:
    """Claim and enqueue until no waiting generation can start now; returns how many started."""
    started = 0
    while claim := await deps.scheduler.claim():
        await start(deps, claim)
        started += 1
    return started


async def start(deps: Deps, claim: Claim) -> None:
    # The claim already moved the generation to `claimed` (in the same Lua step). Should this
    # process die before the enqueue, the sweeper finds the claim without a job.
    await deps.arq.enqueue_job(
        SUBMIT_JOB, claim.gen_id, claim.account, _job_id=keys.submit_job_id(claim.gen_id)
    )
    log.info(
        "generation_dispatched", generation_id=claim.gen_id, account=claim.account, seq=claim.dispatch_seq
    )


async def run_dispatcher(deps: Deps, stopping: asyncio.Event) -> None:
    async def step() -> float:
        await dispatch_once(deps)
        await deps.scheduler.wait_for_wake(deps.settings.dispatch_idle_seconds)
        return 0.0

    await run_loop("dispatcher", step, stopping)
