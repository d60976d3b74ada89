"""A worker's own Prometheus metrics, on WORKER_METRICS_PORT (unset: none are served).

Each worker process serves its own port (one port per worker: give each its own
WORKER_METRICS_PORT), with what only it knows: the requests it sent to Luma
(worker/upstream/metrics.py) and the webhook attempts it made. What every worker shares (the
queue, the accounts, the generations' outcomes) is read from Redis by the api's /metrics, once,
rather than by every worker.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from prometheus_client import Counter, start_http_server

log = structlog.get_logger("worker")

WEBHOOK_DELIVERIES = Counter(
    "luma_queue_webhook_deliveries",
    "Webhook attempts by outcome: delivered, failed (to be retried) or given_up",
    ["outcome"],
)


class Server(Protocol):
    def shutdown(self) -> None: ...


def serve_metrics(host: str, port: int | None) -> Server | None:
    """Start the metrics server in a thread of this process; None when no port is set."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    log.info("worker_metrics_serving", host=host, port=port)
    return server
