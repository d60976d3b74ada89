"""The arq queue both sides share: its name, its JSON serialization and the job names.

Jobs carry ids, never objects, and are JSON (not pickle) so the api and the workers can be
deployed separately and a job can be read by a person.
"""

from __future__ import annotations

import json
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from shared import keys

SUBMIT_JOB = "submit"
UPLOAD_JOB = "upload"


def serialize_job(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def create_arq_pool(redis_url: str) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        redis_settings(redis_url),
        default_queue_name=keys.ARQ_QUEUE,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
    )
    return pool
