"""compose.yaml describes the same stack as `make dev`: Redis with AOF, the simulator, api and worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    assert command[command.index("--appendfsync") + 1] == "everysec"
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


def test_api_listens_on_all_interfaces_on_port_8000(services: dict[str, Any]) -> None:
    """The api binds 0.0.0.0 inside its container and is published on 8000."""
    api = services["api"]
    assert api["environment"]["API_HOST"] == "0.0.0.0"
    assert "8000:8000" in api["ports"]


def test_worker_uses_the_simulator_accounts_by_default(services: dict[str, Any]) -> None:
    """LUMA_ACCOUNTS is valid account config pointing at the simulator service."""
    raw = json.loads(services["worker"]["environment"]["LUMA_ACCOUNTS"])
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


def test_app_services_run_the_luma_queue_image(services: dict[str, Any]) -> None:
    """The app services are built from the Dockerfile, whose entry point is `luma-queue`."""
    for name in APP_SERVICES:
        assert services[name]["build"] == ".", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["luma-queue"]' in dockerfile
