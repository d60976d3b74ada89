"""The `luma-queue` command: help for every part, and clear failures instead of tracebacks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.ports import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = {
    "api": "HTTP api",
    "worker": "Luma accounts",
    "simulator": "fake of the Luma web API",
    "dev": "whole stack",
    "batch": "manifest.jsonl",
    "status": "counted by state",
    "download": "completed video",
}
# Settings the tests must not inherit from the developer's shell.
SETTINGS_VARIABLES = ("REDIS_URL", "LUMA_ACCOUNTS", "ACCESS_TOKEN", "SECRET_KEY", "API_PORT", "API_HOST")


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    env.update(extra)
    return env


def luma_queue(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m cli.main ARGS` in `cwd` (a temp dir, so no developer .env is read)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_script_is_installed_and_shows_help(tmp_path: Path) -> None:
    """`luma-queue --help`, the installed script, lists every subcommand."""
    script = Path(sys.executable).parent / "luma-queue"
    assert script.exists(), "run `make install` (pip install -e '.[dev]') to get the luma-queue script"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize(("command", "says"), SUBCOMMANDS.items())
def test_each_subcommand_explains_itself(tmp_path: Path, command: str, says: str) -> None:
    """`luma-queue COMMAND --help` exits 0 and says what the command does."""
    result = luma_queue(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert says in " ".join(result.stdout.split())


def test_simulator_help_lists_every_knob(tmp_path: Path) -> None:
    """Every timing and fault flag of the simulator is documented."""
    result = luma_queue("simulator", "--help", cwd=tmp_path)
    for flag in (
        "--host", "--port", "--pending-seconds", "--processing-seconds", "--failure-rate", "--error-rate",
        "--slow-rate", "--slow-seconds", "--malformed-rate", "--missing-url-seconds", "--seed",
    ):  # fmt: skip
        assert flag in result.stdout


def test_version_is_the_installed_one(tmp_path: Path) -> None:
    """`luma-queue --version` prints the package's version."""
    from importlib.metadata import version

    result = luma_queue("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"luma-queue {version('luma-queue')}"


@pytest.mark.parametrize("command", ["api", "worker"])
def test_api_and_worker_help_name_the_settings_that_matter(tmp_path: Path, command: str) -> None:
    """`api --help` and `worker --help` name SECRET_KEY, ADMIN_KEY, REDIS_URL and LUMA_ACCOUNTS."""
    result = luma_queue(command, "--help", cwd=tmp_path)
    for setting in ("SECRET_KEY", "ADMIN_KEY", "REDIS_URL", "LUMA_ACCOUNTS"):
        assert setting in result.stdout, (command, setting)


def test_simulator_help_shows_its_default_timings(tmp_path: Path) -> None:
    """Each knob says its default, e.g. the 5 s pending and 30 s processing."""
    text = " ".join(luma_queue("simulator", "--help", cwd=tmp_path).stdout.split())
    assert "Luma's own queue) (default: 5)" in text
    assert "in `processing` (default: 30)" in text
    assert "--media-dir" in text


def test_dev_help_can_set_the_simulators_speed(tmp_path: Path) -> None:
    """`dev --help` offers the simulator's timings, with the dev defaults."""
    text = " ".join(luma_queue("dev", "--help", cwd=tmp_path).stdout.split())
    assert "--sim-pending-seconds SECONDS" in text and "(default: 2.0)" in text
    assert "--sim-processing-seconds SECONDS" in text and "(default: 8.0)" in text


def test_no_subcommand_is_a_usage_error(tmp_path: Path) -> None:
    """Plain `luma-queue` prints usage and exits 2."""
    result = luma_queue(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: luma-queue" in result.stderr


def test_dev_refuses_a_taken_redis_port(tmp_path: Path) -> None:
    """`luma-queue dev` names the busy port and the flag to change it, and starts nothing."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        api_port = free_port()
        result = luma_queue(
            "dev", "--redis-port", str(port), cwd=tmp_path,
            LUMA_ACCOUNTS='[{"name": "a", "cookie": "access_token=x"}]', API_PORT=str(api_port),
            WORKER_METRICS_PORT=str(free_port()),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "--redis-port" in result.stderr
    assert not (tmp_path / ".run" / "logs").exists()


def test_worker_without_accounts_exits_with_a_clear_message(tmp_path: Path, redis_url: str) -> None:
    """With neither LUMA_ACCOUNTS nor ACCESS_TOKEN, the worker refuses to start and says what to set."""
    # redis_url is an emptied database: no account added through the admin API either.
    result = luma_queue("worker", cwd=tmp_path, timeout=60, REDIS_URL=redis_url)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "LUMA_ACCOUNTS" in output or "ACCESS_TOKEN" in output, output
    assert "Traceback" not in output, output


# -- luma-queue dev: the whole stack from one command ------------------------------------------


class DevStack:
    """`luma-queue dev` as a new user runs it, on free ports, in a temp dir, output in a file."""

    def __init__(self, cwd: Path) -> None:
        redis_port, simulator_port, self.api_port, self.worker_metrics_port = free_ports(4)
        self.output_path = cwd / "dev.out"
        self._output = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dev", "--redis-port", str(redis_port),
             "--simulator-port", str(simulator_port), "--stop-timeout", "10"],
            cwd=cwd,
            env=clean_env(
                API_PORT=str(self.api_port),
                WORKER_METRICS_PORT=str(self.worker_metrics_port),
                PYTHONPATH=str(ROOT),
            ),
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"luma-queue dev exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{self.output()}"
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        """The children's pids, from the `started NAME (pid N)` lines."""
        found: dict[str, int] = {}
        for line in self.output().splitlines():
            if line.startswith("luma-queue dev: started "):
                name, _, pid = line.removeprefix("luma-queue dev: started ").partition(" (pid ")
                found[name] = int(pid.rstrip(")"))
        return found

    def call(self, method: str, path: str, body: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.load(response)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._output.close()


def no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    stack = DevStack(tmp_path)
    try:
        stack.wait_for_output("luma-queue is running at")
        yield stack
    finally:
        pids = stack.pids()
        stack.close()
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_dev_runs_a_generation_to_the_end_and_stops_on_ctrl_c(dev_stack: DevStack, tmp_path: Path) -> None:
    """One command brings up redis, simulator, api and worker; Ctrl-C stops all of them and exits 0."""
    assert set(dev_stack.pids()) == {"redis", "simulator", "api", "worker"}
    assert f"http://127.0.0.1:{dev_stack.api_port}" in dev_stack.output()
    assert f"dashboard   http://127.0.0.1:{dev_stack.api_port}/" in dev_stack.output()
    assert "runs open" in dev_stack.output()
    # The admin API is on, with a key the banner shows, and the accounts come from the registry.
    assert "admin key   dev-admin-key" in dev_stack.output()
    assert "sim-1 (http://127.0.0.1:" in dev_stack.output() and "no Luma account used" in dev_stack.output()
    assert "oO0OoO0OoO0Oo" not in dev_stack.output() and "overcommit" not in dev_stack.output()
    assert dev_stack.output().count("SECRET_KEY is empty: the api is open") == 1
    admin = urllib.request.Request(
        f"http://127.0.0.1:{dev_stack.api_port}/api/admin/accounts", headers={"Secret-Key": "dev-admin-key"}
    )
    with no_proxy_opener().open(admin, timeout=10) as answer:
        assert [row["name"] for row in json.load(answer)["data"]] == ["sim-1", "sim-2"]
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(f"http://127.0.0.1:{dev_stack.api_port}/", timeout=10) as page:
        assert page.headers["Content-Type"].startswith("text/html")

    created = dev_stack.call("POST", "/api/generations/create", {"prompt": "a red fox running through snow"})
    generation_id = created["data"][0]["id"]
    deadline = time.monotonic() + 90
    detail = f"/api/generations/{generation_id}"
    while (state := dev_stack.call("GET", detail)["data"]["state"]) != "completed":
        assert state in ("pending", "processing"), dev_stack.output()
        assert time.monotonic() < deadline, dev_stack.output()
        time.sleep(0.5)

    # `curl /metrics` shows the generation; the worker's own port (in the banner) its requests.
    worker_metrics = f"http://127.0.0.1:{dev_stack.worker_metrics_port}/metrics"
    assert f"worker: {worker_metrics}" in dev_stack.output()
    with no_proxy.open(f"http://127.0.0.1:{dev_stack.api_port}/metrics", timeout=10) as answer:
        assert (
            'luma_queue_generations_finished_total{reason="",state="completed"} 1.0' in answer.read().decode()
        )
    with no_proxy.open(worker_metrics, timeout=10) as answer:
        assert "luma_queue_upstream_requests_total{" in answer.read().decode()

    dev_stack.process.send_signal(signal.SIGINT)
    assert dev_stack.process.wait(timeout=60) == 0, dev_stack.output()
    assert all(gone(pid) for pid in dev_stack.pids().values())
    assert (tmp_path / ".run" / "redis" / "appendonlydir").is_dir()
    assert list((tmp_path / ".run" / "simulator" / "generations").glob("*.json"))  # media outlive it
    assert (tmp_path / ".run" / "logs" / "worker.log").stat().st_size > 0


def test_dev_stops_everything_when_a_child_dies(dev_stack: DevStack) -> None:
    """If the worker dies, dev names it, stops the rest and exits non-zero."""
    pids = dev_stack.pids()
    os.kill(pids["worker"], signal.SIGKILL)

    assert dev_stack.process.wait(timeout=60) == 1, dev_stack.output()
    assert "worker was killed by SIGKILL unexpectedly" in dev_stack.output()
    assert all(gone(pid) for pid in pids.values())
