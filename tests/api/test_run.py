"""api.app.run: the open-api warning, one process or several, and a SIGTERM that lets requests finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from structlog.testing import capture_logs

import api.app
import api.processes
from cli.ports import free_port
from shared import keys
from shared.settings import Settings
from tests.api.conftest import KEY_A, auth
from tests.images import PNG

DEADLINE_SECONDS = 15.0


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Settings]]:
    """What run() started instead of serving (which would block), and no global logging set-up."""
    calls: list[tuple[str, Settings]] = []
    monkeypatch.setattr(api.app, "serve_here", lambda settings: calls.append(("here", settings)))
    monkeypatch.setattr(
        api.processes, "run_processes", lambda settings: calls.append(("processes", settings)) or 0
    )
    monkeypatch.setattr(api.app, "configure_logging", lambda level, json_logs: None)
    return calls


def test_run_warns_loudly_when_no_secret_key_is_set(
    served: list[tuple[str, Settings]], capsys: pytest.CaptureFixture[str]
) -> None:
    """An api without SECRET_KEY says it is open to anyone in one WARNING log line (the log is on
    stderr), not a second copy printed beside it."""
    with capture_logs() as logs:
        api.app.run(Settings(_env_file=None, secret_key=[]))

    assert "open to anyone" not in capsys.readouterr().err  # only the log line says it
    warnings = [line for line in logs if line["log_level"] == "warning" and "open to anyone" in line["event"]]
    assert len(warnings) == 1
    assert len(served) == 1


def test_run_does_not_warn_when_keys_are_set(
    served: list[tuple[str, Settings]], capsys: pytest.CaptureFixture[str]
) -> None:
    """With SECRET_KEY set there is nothing to warn about."""
    with capture_logs() as logs:
        api.app.run(Settings(_env_file=None, secret_key=["k"]))

    assert "open to anyone" not in capsys.readouterr().err
    assert not [line for line in logs if line["log_level"] == "warning"]


def test_run_serves_in_this_process_unless_more_processes_are_asked_for(
    served: list[tuple[str, Settings]],
) -> None:
    """API_PROCESSES=1 serves here; more starts that many processes instead."""
    api.app.run(Settings(_env_file=None, secret_key=["k"]))
    api.app.run(Settings(_env_file=None, secret_key=["k"], api_processes=3))

    assert [(where, settings.api_processes) for where, settings in served] == [("here", 1), ("processes", 3)]


@pytest.fixture
def api_process(redis_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The api as its own process (run(), signals and all), with uploads that wait 2 s for a worker."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "API_PORT": str(port),
        "SECRET_KEY": KEY_A,
        "UPLOAD_TIMEOUT_SECONDS": "2",
        "SHUTDOWN_GRACE_SECONDS": "20",
        "LOG_JSON": "true",
    }
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from api.app import run; from shared.settings import Settings; run(Settings())",
            ],
            cwd=tmp_path,  # no .env here
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        yield process, f"http://127.0.0.1:{port}"
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_until_serving(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            async with session.get(f"{url}/api/generations", headers=auth(KEY_A)) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, "the api did not start"
        await asyncio.sleep(0.05)


async def test_sigterm_lets_a_request_in_flight_finish(
    api_process: tuple[subprocess.Popen[bytes], str], redis: redis_asyncio.Redis
) -> None:
    """On SIGTERM the api stops taking work but answers the upload it is waiting on, then exits 0."""
    process, url = api_process
    async with aiohttp.ClientSession() as session:
        await wait_until_serving(session, url)
        form = aiohttp.FormData()
        form.add_field("file", PNG, filename="a.png")
        in_flight = asyncio.create_task(
            session.post(f"{url}/api/generations/upload", data=form, headers=auth(KEY_A))
        )
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not await redis.keys(keys.upload_bytes("*")):  # the handler is now waiting on a worker
            assert time.monotonic() < deadline, "the upload never reached Redis"
            await asyncio.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        response = await in_flight

        # No worker runs here, so the answer is the upload's own timeout, delivered, not cut off.
        assert response.status == 504
        assert (await response.json())["code"] == "upload_timeout"
        response.release()
    assert await asyncio.to_thread(process.wait, DEADLINE_SECONDS) == 0
