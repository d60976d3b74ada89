"""`luma-queue api` started the ways a newcomer gets it wrong: one clear line each, no traceback.

Each test runs the real command as a subprocess in an empty directory (no developer .env), the
way a user would, and reads what it printed on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from cli.ports import free_port
from cli.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# Settings the tests must not inherit from the developer's shell.
SETTINGS_VARIABLES = (
    "REDIS_URL", "LUMA_ACCOUNTS", "ACCESS_TOKEN", "SECRET_KEY", "ADMIN_KEY", "API_PORT", "API_HOST",
    "ALLOW_OPEN_API", "LOG_JSON",
)  # fmt: skip
MAX_STDERR_LINES = 3
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def environment(**settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_VARIABLES}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


def api(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`luma-queue api` with these settings, run to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "api"],
        cwd=cwd,
        env=environment(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused_in_a_few_lines(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed, said so in at most three lines, without a traceback; its stderr."""
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= MAX_STDERR_LINES, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"REDIS_URL": "localhost:6379"}, ["REDIS_URL", "redis://", "rediss://", "unix://"]),
        ({"LUMA_ACCOUNTS": "not json"}, ["LUMA_ACCOUNTS", "not valid JSON", '"cookie"']),
        ({"API_PORT": "eighty"}, ["API_PORT", "integer"]),
        ({"LUMA_ACCOUNTS": '[{"name": "main"}]'}, ["LUMA_ACCOUNTS[0]", "cookie"]),
    ],
    ids=["redis-url-without-scheme", "accounts-not-json", "port-not-a-number", "account-without-cookie"],
)
def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, settings: dict[str, str], says: list[str]
) -> None:
    """Each bad setting is refused when settings load, in one line naming it and what was expected."""
    stderr = refused_in_a_few_lines(api(tmp_path, **settings))
    assert len(stderr.strip().splitlines()) == 1, stderr
    for text in says:
        assert text in stderr, stderr


def test_two_bad_settings_are_two_lines(tmp_path: Path) -> None:
    """One line per bad setting, never a wall of pydantic output or a link to its docs."""
    stderr = refused_in_a_few_lines(api(tmp_path, API_PORT="eighty", MAX_QUEUE_DEPTH="0"))
    lines = stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["API_PORT", "MAX_QUEUE_DEPTH"], stderr
    assert "pydantic" not in stderr


def test_a_cookie_in_a_bad_setting_is_not_repeated(tmp_path: Path) -> None:
    """A refused account's cookie is not in the message: settings hold credentials."""
    stderr = refused_in_a_few_lines(
        api(tmp_path, LUMA_ACCOUNTS='[{"name": "a b", "cookie": "access_token=very-secret-cookie"}]')
    )
    assert "very-secret-cookie" not in stderr


def test_a_taken_port_is_one_line_naming_the_port_and_the_setting(tmp_path: Path) -> None:
    """Another server on API_PORT: the api exits at once naming the port and API_PORT."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stderr = refused_in_a_few_lines(api(tmp_path, API_PORT=str(port), REDIS_URL="redis://127.0.0.1:1/0"))
    assert f"127.0.0.1:{port}" in stderr and "already in use" in stderr and "API_PORT" in stderr


def test_an_open_api_on_a_network_address_is_refused(tmp_path: Path) -> None:
    """No SECRET_KEY on 0.0.0.0: refused, saying why and what to set; a loopback one is not."""
    stderr = refused_in_a_few_lines(api(tmp_path, API_HOST="0.0.0.0", API_PORT=str(free_port())))
    assert "SECRET_KEY" in stderr and "ALLOW_OPEN_API=true" in stderr and "0.0.0.0" in stderr


def test_compose_without_an_env_file_refuses_to_run_open(tmp_path: Path) -> None:
    """The api's environment in compose.yaml, as Compose resolves it with no .env, is refused."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    settings: dict[str, str] = {}
    for entry in services["api"]["env_file"]:
        if entry["path"] != ".env":  # the optional one: this is compose without it
            values = dotenv_values(ROOT / entry["path"])
            settings.update({name: value for name, value in values.items() if value is not None})
    settings.update({name: _compose_default(value) for name, value in services["api"]["environment"].items()})
    settings["API_PORT"] = str(free_port())  # the container's port, on this machine
    stderr = refused_in_a_few_lines(api(tmp_path, **settings))
    assert "ALLOW_OPEN_API" in stderr


def _compose_default(value: Any) -> str:
    """`${NAME:-default}` as Compose reads it when NAME is unset: the default."""
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        _, _, default = text[2:-1].partition(":-")
        return default
    return text


def test_an_api_without_redis_answers_503_until_redis_is_there(tmp_path: Path) -> None:
    """Redis down at start: the api runs, answers 503 redis_unavailable with Retry-After, logs
    one line per retry (no traceback), and serves normally once Redis answers."""
    redis = RedisServer(tmp_path / "redis", port=free_port())
    port = free_port()
    stderr_path = tmp_path / "api.err"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api"],
            cwd=tmp_path,
            env=environment(REDIS_URL=redis.url, API_PORT=str(port), LOG_JSON="true"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _, headers, body = _poll(
            port, "/api/generations", until=lambda status: status == 503, process=process
        )
        assert body["code"] == "redis_unavailable"
        assert int(headers["Retry-After"]) >= 1
        redis.start()
        _, _, body = _poll(port, "/api/generations", until=lambda status: status == 200, process=process)
        assert body == {"data": []}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        redis.kill()
    output = stderr_path.read_text()
    assert "Traceback" not in output, output
    records = [json.loads(line) for line in output.splitlines()]  # every line is one whole record
    assert any(record.get("retry_in_seconds") for record in records), output


def _poll(
    port: int, path: str, *, until: Any, process: subprocess.Popen[bytes], within: float = 60.0
) -> tuple[int, dict[str, str], Any]:
    """GET path until `until(status)`; the status, headers and JSON body of that answer."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        assert process.poll() is None, "the api exited while Redis was down"
        try:
            with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                status, headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, headers, raw = error.code, dict(error.headers), error.read()
        except OSError as error:  # not listening yet
            last = error
            time.sleep(0.2)
            continue
        if until(status):
            return status, headers, json.loads(raw)
        last = status
        time.sleep(0.2)
    raise AssertionError(f"no matching answer from {path} within {within}s; last: {last}")
