"""Which workers are alive, and what a dead one was doing: so its jobs move again within seconds.

arq marks a running job "in progress" for the job's whole timeout (plus 10 s), so a worker killed
mid-job would leave its job untouched for minutes. Instead each worker keeps a liveness key with a
short TTL (3 x WORKER_HEARTBEAT_SECONDS) and the set of jobs it runs. Every worker looks at the
others at each beat; when one's key has expired, the first to notice removes the dead worker's
in-progress markers in one Lua step, and arq hands the jobs to whoever polls next. The submit
job's write-ahead intent and reconcile then decide, as after any crash, whether the upstream
create happened: taking a job over never makes a second create.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import structlog
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from shared import keys
from worker.loops import run_loop

log = structlog.get_logger(__name__)

# Take over a dead worker's jobs, once: only if its liveness key is gone, and all in one step so
# that two workers noticing at once cannot free a job the first one's takeover already handed on.
# KEYS: workers set, the dead worker's liveness key, its jobs set. ARGV: worker id, in-progress
# key prefix. Returns the job ids freed, or false if the worker is alive after all.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local jobs = redis.call('SMEMBERS', KEYS[3])
for _, job_id in ipairs(jobs) do redis.call('DEL', ARGV[2] .. job_id) end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
return jobs
"""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Liveness:
    def __init__(self, redis: Redis, *, worker_id: str, heartbeat_seconds: float) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.heartbeat_seconds = heartbeat_seconds
        self.ttl_ms = int(heartbeat_seconds * 3 * 1000)
        self._take_over = redis.register_script(_TAKE_OVER)

    async def beat(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.worker_alive(self.worker_id), "1", px=self.ttl_ms)
            pipe.sadd(keys.WORKERS, self.worker_id)
            await pipe.execute()

    async def job_started(self, job_id: str) -> None:
        await self.redis.sadd(keys.worker_jobs(self.worker_id), job_id)

    async def job_ended(self, job_id: str) -> None:
        await self.redis.srem(keys.worker_jobs(self.worker_id), job_id)

    async def take_over_dead(self) -> list[str]:
        """Free the jobs of every worker whose liveness key has expired; returns their job ids."""
        freed: list[str] = []
        for other in await self.redis.smembers(keys.WORKERS):
            if other == self.worker_id or await self.redis.exists(keys.worker_alive(other)):
                continue
            jobs = await self._take_over(
                keys=[keys.WORKERS, keys.worker_alive(other), keys.worker_jobs(other)],
                args=[other, in_progress_key_prefix],
            )
            if jobs:
                log.warning("dead_worker_jobs_taken_over", dead_worker=other, jobs=sorted(map(str, jobs)))
                freed += [str(job) for job in jobs]
            elif jobs is not None:
                log.info("dead_worker_removed", dead_worker=other)
        return freed

    async def leave(self) -> None:
        """A clean exit: nothing of ours is left for another worker to take over."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker_alive(self.worker_id), keys.worker_jobs(self.worker_id))
            pipe.srem(keys.WORKERS, self.worker_id)
            await pipe.execute()


async def run_liveness(liveness: Liveness, stopping: asyncio.Event) -> None:
    async def step() -> float:
        await liveness.beat()
        await liveness.take_over_dead()
        return liveness.heartbeat_seconds

    await run_loop("liveness", step, stopping)
