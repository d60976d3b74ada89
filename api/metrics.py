"""GET /metrics: Prometheus metrics of this api process and of the pool, as Redis has it now.

Two kinds of series:
- this process's own, kept in memory by prometheus-client: HTTP requests by route template,
  method and status, and their latency (observed by the request log's middleware);
- the pool's, read from Redis at scrape time, the same whichever api process answers: queue
  depth (total and per key holder), each account's state, slots in use and limit, capacity left,
  and the outcomes of generations folded from the event log (shared/tally.py).

With `--processes N` (api/processes.py) the processes use prometheus-client's multiprocess mode:
each writes its own series to files in PROMETHEUS_MULTIPROC_DIR and whichever process answers a
scrape sums them all, so one scrape target covers every process on that port.

METRICS_KEY, when set, is required as `Authorization: Bearer <key>`; unset, /metrics is open
(it shows counts and account names, never a key, a prompt or a generation id).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from api.appkeys import REDIS, SETTINGS, STORE
from api.appkeys import REGISTRY as ACCOUNTS
from api.auth import KEYRING
from api.errors import Unauthorized
from api.processes import MULTIPROC_ENV
from shared import keys
from shared.health import AccountState
from shared.tally import EventTally, Tally

UNMATCHED = "unmatched"  # a path no route took: one label, whatever was asked for

HTTP_REQUESTS = Counter(
    "luma_queue_http_requests",
    "HTTP requests the api answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "luma_queue_http_request_duration_seconds",
    "Time from a request's arrival to its answer (a live stream: until it closed), by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def _route(request: web.Request) -> str:
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is None or match_info.http_exception is not None:  # no route, or not this method
        return UNMATCHED
    return resource.canonical


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    """Count and time one answered request by its route's template (never its path: ids are
    unbounded). Called by the request log's middleware (api/middleware.py), which already knows
    the status and the time, so no second middleware wraps every request for it."""
    route = _route(request)
    method = request.method if request.method in _METHODS else "other"
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route, method).observe(seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Snapshot:
    """A collector of families gathered beforehand (Redis is read asynchronously, collect() is not)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def pool_families(request: web.Request) -> list[Metric]:
    """What Redis says about the queue, the accounts and the generations' outcomes, now."""
    app = request.app
    redis = app[REDIS]
    holders = app[KEYRING].holders
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.WAIT_ALL)
        for owner in holders:
            pipe.zcard(keys.wait_queue(owner))
        depths = await pipe.execute()
    accounts = await app[ACCOUNTS].views()
    tally = await EventTally(redis, app[STORE]).read()

    depth = GaugeMetricFamily("luma_queue_queue_depth", "Generations waiting in the gateway's queue, in all")
    depth.add_metric([], int(depths[0]))
    by_holder = GaugeMetricFamily(
        "luma_queue_holder_queue_depth",
        "Generations waiting, per key holder (its key's hash)",
        labels=["holder"],
    )
    for owner, count in zip(holders, depths[1:], strict=True):
        by_holder.add_metric([owner], int(count))

    in_flight = GaugeMetricFamily(
        "luma_queue_account_in_flight", "Slots in use on the account (live leases)", labels=["account"]
    )
    limit = GaugeMetricFamily(
        "luma_queue_account_concurrency_limit",
        "How many generations the account may run at once",
        labels=["account"],
    )
    available = GaugeMetricFamily(
        "luma_queue_account_available",
        "Capacity left on the account, as last read (generations on web accounts, cents on official)",
        labels=["account", "unit"],
    )
    state = GaugeMetricFamily(
        "luma_queue_account_state",
        "1 for the state the account is in, 0 for the others",
        labels=["account", "state"],
    )
    cooling = GaugeMetricFamily(
        "luma_queue_account_cooling",
        "1 while the account rests after a 429 or upstream failures",
        labels=["account"],
    )
    usable = GaugeMetricFamily(
        "luma_queue_account_usable",
        "1 when the account can take work now (active, not cooling)",
        labels=["account"],
    )
    for account in accounts:
        in_flight.add_metric([account.name], account.in_flight)
        limit.add_metric([account.name], account.limit)
        if account.available is not None:
            available.add_metric([account.name, account.unit], account.available)
        for name in AccountState:
            state.add_metric([account.name, name.value], 1 if account.state == name.value else 0)
        cooling.add_metric([account.name], 1 if account.cooling else 0)
        usable.add_metric([account.name], 1 if account.usable else 0)
    return [depth, by_holder, in_flight, limit, available, state, cooling, usable, *_tally_families(tally)]


def _tally_families(tally: Tally) -> list[Metric]:
    accepted = CounterMetricFamily(
        "luma_queue_generations_accepted", "Generations accepted (stored and queued) by the api"
    )
    accepted.add_metric([], tally.accepted)
    finished = CounterMetricFamily(
        "luma_queue_generations_finished",
        "Generations that ended, by final state and failure reason (empty when completed)",
        labels=["state", "reason"],
    )
    for (state, reason), count in sorted(tally.finished.items()):
        finished.add_metric([state, reason], count)
    duration = HistogramMetricFamily(
        "luma_queue_generation_duration_seconds", "Time from create to completed or failed"
    )
    duration.add_metric(
        [], [(bound, float(count)) for bound, count in tally.duration_buckets], tally.duration_sum
    )
    return [accepted, finished, duration]


def _process_registry() -> Any:
    """This process's series; with several api processes, all of theirs summed."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _authorized(request: web.Request) -> bool:
    expected = request.app[SETTINGS].metrics_key
    if not expected:
        return True
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text exposition (METRICS_KEY as a Bearer token, when set)."""
    if not _authorized(request):
        raise Unauthorized("/metrics needs METRICS_KEY as `Authorization: Bearer <key>`")
    pool = CollectorRegistry(auto_describe=False)
    pool.register(_Snapshot(await pool_families(request)))
    body = generate_latest(_process_registry()) + generate_latest(pool)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
