"""compose.yaml describes the same stack as `make dev`: Redis with AOF, the simulator, api and worker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from shared.settings import AccountConfig, Settings

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("simulator", "api", "worker")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    result: dict[str, Any] = compose["services"]
    return result


def _depends_on(service: dict[str, Any]) -> set[str]:
    depends = service.get("depends_on", {})
    return set(depends) if isinstance(depends, dict | list) else set()


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def test_compose_names_the_four_services(services: dict[str, Any]) -> None:
    """redis, simulator, api and worker are all there."""
    assert {"redis", "simulator", "api", "worker"} <= set(services)


def test_redis_keeps_an_append_only_file_and_never_evicts(services: dict[str, Any]) -> None:
    """Redis runs with AOF (fsync every second), noeviction, a volume and a PING healthcheck."""
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = _command(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]


def test_api_and_worker_wait_for_a_healthy_redis(services: dict[str, Any]) -> None:
    """Neither the api nor the worker starts before Redis answers PING."""
    for name in ("api", "worker"):
        assert "redis" in _depends_on(services[name]), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0", name


def test_api_listens_on_all_interfaces_on_port_8000_published_on_loopback(services: dict[str, Any]) -> None:
    """The api binds 0.0.0.0 inside its container; the host publishes 8000 on its loopback only."""
    api = services["api"]
    assert api["environment"]["API_HOST"] == "0.0.0.0"
    assert api["ports"] == ["127.0.0.1:8000:8000"]


def env_file(path: Path) -> dict[str, str]:
    """A Compose env file as Settings (python-dotenv) and Compose both read it."""
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def test_keys_and_accounts_come_from_env_files_not_from_compose(services: dict[str, Any]) -> None:
    """The api and the worker read compose.simulator.env, then an optional .env over it; no
    credential or key is written in compose.yaml itself."""
    for name in ("api", "worker"):
        files = services[name]["env_file"]
        assert files == [{"path": "compose.simulator.env"}, {"path": ".env", "required": False}], name
        for variable in ("SECRET_KEY", "ADMIN_KEY", "LUMA_ACCOUNTS", "ACCESS_TOKEN", "ALLOW_OPEN_API"):
            assert variable not in services[name]["environment"], (name, variable)


def test_worker_uses_the_simulator_accounts_by_default(services: dict[str, Any]) -> None:
    """LUMA_ACCOUNTS is valid account config pointing at the simulator service."""
    raw = json.loads(env_file(ROOT / "compose.simulator.env")["LUMA_ACCOUNTS"])
    accounts = [AccountConfig.model_validate(entry) for entry in raw]
    assert [account.name for account in accounts] == ["sim-1", "sim-2"]
    assert {account.base_url for account in accounts} == {"http://simulator:8100"}
    assert "simulator" in _depends_on(services["worker"])
    assert _command(services["simulator"])[:1] == ["simulator"]


def test_every_environment_variable_is_a_setting(services: dict[str, Any]) -> None:
    """A misspelt variable would be silently ignored by Settings, so each must name a real field."""
    for name in APP_SERVICES:
        for variable in services[name].get("environment", {}):
            assert variable.lower() in Settings.model_fields, f"{name}: {variable}"
    for path in (ROOT / "compose.simulator.env", ROOT / ".env.example"):
        for variable in env_file(path):
            assert variable.lower() in Settings.model_fields, f"{path.name}: {variable}"


def test_env_example_documents_every_setting() -> None:
    """.env.example names every setting (commented out at its default), so none needs the source."""
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^# ([A-Z0-9_]+)=", text, flags=re.MULTILINE))
    missing = {name.upper() for name in Settings.model_fields if name != "fault_point"} - named
    assert not missing, f"add to .env.example: {sorted(missing)}"
    assert not env_file(ROOT / ".env.example"), "every line of .env.example is commented out"


def test_app_services_run_the_luma_queue_image(services: dict[str, Any]) -> None:
    """The app services are built from the Dockerfile, whose entry point is `luma-queue`."""
    for name in APP_SERVICES:
        assert services[name]["build"] == ".", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["luma-queue"]' in dockerfile


def test_the_ha_profile_adds_a_replica_and_three_sentinels_watching_redis(services: dict[str, Any]) -> None:
    """`--profile ha`: a durable replica of redis and three sentinels (quorum 2) that monitor it."""
    replica = services["redis-replica"]
    assert replica["profiles"] == ["ha"]
    command = _command(replica)
    assert command[command.index("--replicaof") + 1 : command.index("--replicaof") + 3] == ["redis", "6379"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    sentinels = [name for name in services if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    for name in sentinels:
        sentinel = services[name]
        assert sentinel["profiles"] == ["ha"], name
        script = " ".join(_command(sentinel))
        assert "sentinel monitor mymaster redis 6379 2" in script, name
        assert "--sentinel" in script and "port 26379" in script, name
    # Without the profile nothing changes: the app services start on the plain Redis.
    for name in ("redis", *APP_SERVICES):
        assert "profiles" not in services[name], name


def test_api_and_worker_take_the_sentinel_settings_from_the_environment(services: dict[str, Any]) -> None:
    """REDIS_SENTINELS and REDIS_MIN_REPLICAS_ACKED pass through to both, empty and 0 unless set."""
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert environment["REDIS_SENTINELS"] == "${REDIS_SENTINELS:-}", name
        assert environment["REDIS_MIN_REPLICAS_ACKED"] == "${REDIS_MIN_REPLICAS_ACKED:-0}", name
    # What the ha profile's README line sets must be something Settings accepts.
    settings = Settings(_env_file=None, redis_sentinels="sentinel-1:26379,sentinel-2:26379,sentinel-3:26379")
    assert [host for host, _ in settings.redis_sentinels] == ["sentinel-1", "sentinel-2", "sentinel-3"]


def test_the_monitoring_profile_adds_prometheus_and_grafana_with_our_files(services: dict[str, Any]) -> None:
    """`--profile monitoring`: Prometheus with deploy/prometheus.yml, Grafana with the dashboard."""
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    mounted = {volume.split(":")[0] for volume in grafana["volumes"]}
    assert {"./deploy/grafana/provisioning", "./deploy/grafana/luma-queue.json"} <= mounted
    for volume in (*prometheus["volumes"], *grafana["volumes"]):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    # The worker serves its metrics to the compose network for Prometheus to scrape.
    worker = services["worker"]["environment"]
    assert worker["WORKER_METRICS_HOST"] == "0.0.0.0"
    assert Settings(_env_file=None, worker_metrics_port=worker["WORKER_METRICS_PORT"]).worker_metrics_port
