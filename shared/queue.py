"""The arq queue both sides share: its name, its JSON serialization, the job names and the pool.

Jobs carry ids, never objects, and are JSON (not pickle) so the api and the workers can be
deployed separately and a job can be read by a person. arq's own `create_pool` cannot set socket
timeouts, so the pool is built like every other client (shared/redisconn.py) and handed to arq.
"""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis

from shared import keys
from shared.redisconn import build_client
from shared.settings import Settings

SUBMIT_JOB = "submit"
UPLOAD_JOB = "upload"
REFRESH_JOB = "refresh"


def serialize_job(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def create_arq_pool(settings: Settings) -> ArqRedis:
    """arq's client (bytes replies) with our job format, built like every other Redis client."""
    pool = build_client(settings, ArqRedis, decode_responses=False)
    pool.job_serializer = serialize_job
    pool.job_deserializer = deserialize_job
    pool.default_queue_name = keys.ARQ_QUEUE
    return pool
