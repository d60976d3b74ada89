"""Upstream requests as Prometheus series: by route template, status and account, and their latency.

Each provider's one-attempt function (`_request` in web.py and official.py) reports here, so
every attempt is counted, retries included. The route is the path with its ids taken out
(`/api/photon/v1/generations/{id}`), and the status is the HTTP status or, when no answer came,
`not_sent` (the connection failed) or `no_answer` (a timeout or a cut connection): no label takes
an unbounded value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from worker.upstream.errors import RequestNotSent

UPSTREAM_REQUESTS = Counter(
    "luma_queue_upstream_requests",
    "Requests a worker sent to Luma (each attempt), by route template, status and account",
    ["route", "status", "account"],
)
UPSTREAM_DURATION = Histogram(
    "luma_queue_upstream_request_duration_seconds",
    "Time from sending a request to Luma to its whole answer, by route template and account",
    ["route", "account"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Path segments that name something rather than an id.
_WORDS = frozenset({"generations", "file_upload", "extend", "download_video_url", "video", "user"})


def route_template(method: str, path: str) -> str:
    """`POST /api/photon/v1/generations/{id}/extend` from the path with the id in it."""
    parts = path.split("?", 1)[0].split("/")
    shown = []
    for index, part in enumerate(parts):
        after_generations = index > 0 and parts[index - 1] == "generations"
        shown.append("{id}" if after_generations and part and part not in _WORDS else part)
    return f"{method} {'/'.join(shown)}"


@dataclass
class Attempt:
    status: str = "no_answer"


@contextmanager
def observed(method: str, path: str, account: str) -> Iterator[Attempt]:
    """Time one attempt; the caller sets `status` once an answer came."""
    attempt = Attempt()
    started = time.perf_counter()
    try:
        yield attempt
    except RequestNotSent:
        attempt.status = "not_sent"
        raise
    finally:
        route = route_template(method, path)
        UPSTREAM_REQUESTS.labels(route, attempt.status, account).inc()
        UPSTREAM_DURATION.labels(route, account).observe(time.perf_counter() - started)
