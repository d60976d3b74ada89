"""The one way a worker's background loops run: step, pause, and back off when something fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 10.0


async def run_loop(name: str, step: Callable[[], Awaitable[float]], stopping: asyncio.Event) -> None:
    """Run `step` until `stopping` is set; `step` returns how long to pause before the next run.

    A failure never ends the loop: while Redis is away each loop logs one line per attempt and
    retries with exponential backoff, so the worker resumes by itself when Redis is back.
    """
    failures = 0
    while not stopping.is_set():
        try:
            pause = await step()
            failures = 0
        except asyncio.CancelledError:
            raise
        except (RedisConnectionError, RedisTimeoutError) as error:
            failures += 1
            pause = min(MAX_BACKOFF_SECONDS, 0.1 * 2**failures)
            log.warning("loop_redis_unavailable", loop=name, error=str(error), retry_in=pause)
        except Exception:
            failures += 1
            pause = min(MAX_BACKOFF_SECONDS, 0.1 * 2**failures)
            log.exception("loop_failed", loop=name, retry_in=pause)
        await asyncio.sleep(pause)
