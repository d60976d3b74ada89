"""`luma-queue api --processes N`: N api processes serving one port, for N cores.

Each process binds the port with SO_REUSEPORT, so the kernel spreads new connections over them
evenly (a shared listening socket would wake them all and let the busiest take most). This process
only starts them and stops them: SIGTERM or SIGINT here is passed to each as SIGTERM, and they drain
as a single api would. If one of them exits on its own the others are stopped and the exit code is
1, so that whatever supervises the api (compose, systemd) restarts it whole.

Metrics: the processes use prometheus-client's multiprocess mode, so that /metrics on the one port
shows every process's HTTP series summed, whichever process answers the scrape. They write them to
files in PROMETHEUS_MULTIPROC_DIR: a fresh temporary directory (removed on exit) unless one is set,
in which case its old `*.db` files are removed first, as the client's documentation asks.

Chosen over gunicorn with aiohttp's worker class: that worker serves through aiohttp's own
`run_app` path, so the connection cap, the header deadline and the JSON for parser errors
(api/server.py) would need re-doing inside gunicorn's worker, for a supervisor this small.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import structlog

from shared.logs import configure_logging
from shared.settings import Settings

log = structlog.get_logger("api")

# spawn, not fork: each process starts clean, with no copy of this one's threads or sockets.
_CONTEXT = multiprocessing.get_context("spawn")


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_processes(settings: Settings) -> int:
    """Start API_PROCESSES api processes and wait for them; the exit code."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return _run_processes(settings)
    # Set before the children start: the spawned processes read it when they import prometheus-client.
    directory = tempfile.mkdtemp(prefix="luma-queue-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        return _run_processes(settings)
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _run_processes(settings: Settings) -> int:
    count = settings.api_processes
    children: list[BaseProcess] = [
        _CONTEXT.Process(target=serve_child, args=(settings, os.getpid()), name=f"api-{index}")
        for index in range(count)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _terminate(children)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        log.info("api starting processes", processes=count, host=settings.api_host, port=settings.api_port)
        for child in children:
            child.start()
        while True:
            # One look at every child per turn: a child's exit code becomes known by polling it, so
            # the look that finds it gone must also be the one that acts on it (a second look could
            # see it gone after the first did not, and leave the survivors serving on).
            exited = [child for child in children if child.exitcode is not None]
            running = [child for child in children if child not in exited]
            if exited and not stopping:
                for child in exited:
                    log.error(
                        "an api process exited; stopping the others", pid=child.pid, code=child.exitcode
                    )
                failed = True
                stopping = True
                _terminate(running)
            if not running:
                break
            wait([child.sentinel for child in running])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = failed or any(child.exitcode != 0 for child in children)
    log.info("api processes stopped", codes=[child.exitcode for child in children])
    return 1 if failed else 0


def _terminate(children: list[BaseProcess]) -> None:
    for child in children:
        if child.pid is not None and child.exitcode is None:
            os.kill(child.pid, signal.SIGTERM)


def serve_child(settings: Settings, parent_pid: int) -> None:
    """One of the processes: serves until the SIGTERM its parent passes on (or the parent is gone).

    Ctrl-C in a terminal reaches the whole process group; the parent passes it on as SIGTERM, so
    the child ignores SIGINT rather than stopping twice.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_json)
    from api.app import serve_here  # api.app imports this module

    serve_here(settings, reuse_port=True, stop_signals=(signal.SIGTERM,), parent_pid=parent_pid)
