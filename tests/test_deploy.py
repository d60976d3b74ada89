"""deploy/: the Grafana dashboard asks only for metrics the code exports, and Prometheus scrapes
the api and the workers where compose runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import redis.asyncio as redis_asyncio
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import worker.metrics
import worker.upstream.metrics
from shared.accounts import AccountRegistry
from shared.settings import AccountConfig
from tests.fixtures.stack import api_settings, running_api

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "luma-queue.json"
METRIC = re.compile(r"\bluma_queue_[a-z0-9_]+\b")
# The series each type of family exposes.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def series_names(families: Any) -> set[str]:
    return {
        family.name + suffix
        for family in families
        if family.name.startswith("luma_queue_")
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


async def test_every_metric_the_dashboard_names_is_exported(redis_url: str) -> None:
    """Each name in each panel's PromQL is a series the api's /metrics or a worker's registry has."""
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await AccountRegistry(client).sync_from_settings([AccountConfig(name="a", cookie="access_token=x")])
    finally:
        await client.aclose()
    async with running_api(api_settings(redis_url)) as api:
        response = await api.get("/metrics")
        assert response.status == 200
        exported = series_names(text_string_to_metric_families(await response.text()))
    # The worker's own series live in its process's registry (worker/metrics.py serves it).
    assert worker.metrics.WEBHOOK_DELIVERIES and worker.upstream.metrics.UPSTREAM_REQUESTS
    exported |= series_names(REGISTRY.collect())

    dashboard = json.loads(DASHBOARD.read_text())
    named = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert named, "the dashboard names no metric"
    assert named - exported == set()
    # What the issue asks the picture to show is there.
    wanted = {
        "luma_queue_queue_depth",
        "luma_queue_generations_finished_total",
        "luma_queue_account_in_flight",
        "luma_queue_account_concurrency_limit",
        "luma_queue_account_available",
        "luma_queue_upstream_requests_total",
        "luma_queue_generation_duration_seconds_bucket",
    }
    assert wanted <= named


def test_the_dashboard_is_importable_grafana_json() -> None:
    """A title, a stable uid, a Prometheus data source variable, and panels each with a query."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "luma-queue"
    assert [var["type"] for var in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] for panel in dashboard["panels"])
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    assert "p50" in titles and "p95" in titles


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    """The api's /metrics on its port, and each worker on the port compose gives WORKER_METRICS_PORT."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["luma-queue-api"]
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    port = int(compose["services"]["worker"]["environment"]["WORKER_METRICS_PORT"])
    [discovery] = jobs["luma-queue-worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["port"] == port
