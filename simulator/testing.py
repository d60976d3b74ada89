"""Run the simulator inside a test's event loop, and take it down and up again on the same port.

    async with RunningSimulator(SimulatorConfig(pending_seconds=0.05)) as sim:
        ...  # talk to sim.url; inspect or script sim.state
        await sim.stop()   # connections are now refused
        await sim.start()  # same port, same state: accounts, generations, log

Each start builds a fresh aiohttp app around the one `SimulatorState`, because an app cannot be
run again once its runner has been cleaned up.
"""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.state import SimulatorState


class RunningSimulator:
    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        state: SimulatorState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 0.5,
    ) -> None:
        """`port=0` picks a free port at the first start and keeps it for later starts.

        `state` lets a test inject one built with a fake clock; otherwise one is built from `config`.
        A short `shutdown_timeout` so that `stop()` does not wait on a handler that hangs on purpose.
        """
        self.state = state if state is not None else SimulatorState(config)
        self.host = host
        self.port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def config(self) -> SimulatorConfig:
        return self.state.config

    @property
    def url(self) -> str:
        if self.port == 0:
            raise RuntimeError("the simulator has not been started yet, so it has no port")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(
            create_app(self.state), access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            # reuse_address: connections of the previous run may still sit in TIME_WAIT on this port.
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the listening socket and every connection; the state is kept."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
