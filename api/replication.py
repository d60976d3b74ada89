"""Accepted means kept across a Redis failover too: a create is on enough replicas before its 2xx.

Redis replicates asynchronously, so a primary that dies right after answering can take its last
writes with it, and the replica promoted by Sentinel never saw them. With REDIS_MIN_REPLICAS_ACKED
set, a create or batch calls `confirm_replicated` once its generations are stored, and answers
2xx only when that many replicas have them (Redis WAIT).
"""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from api.errors import ReplicationUnconfirmed
from shared.redisconn import replicas_confirm
from shared.settings import Settings

log = structlog.get_logger("api")


async def confirm_replicated(redis: Redis, settings: Settings, gen_ids: list[str]) -> None:
    """Return once REDIS_MIN_REPLICAS_ACKED replicas have every write made so far; else a 503."""
    acked, wanted = await replicas_confirm(redis, settings)
    if acked < wanted:
        log.warning("replication_unconfirmed", generation_ids=gen_ids, acked=acked, wanted=wanted)
        which = f"generation {gen_ids[0]} is" if len(gen_ids) == 1 else f"{len(gen_ids)} generations are"
        raise ReplicationUnconfirmed(
            f"{which} stored on the primary Redis, but only {acked} of {wanted} replicas confirmed "
            f"within {settings.redis_replica_ack_timeout_seconds:g}s, so a failover now could lose it. "
            "It may still run: read it (GET /api/generations/{id}, ids in generation_ids) before "
            "creating it again.",
            generation_ids=gen_ids,
        )
