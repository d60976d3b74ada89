"""How one api process serves connections: deadlines, a cap on connections, and JSON for what
aiohttp answers by itself.

aiohttp's `run_app` lets a connection take as long as it likes over its headers and takes as many
connections as the process has files; past that, accept() fails over and over. Here instead:

- A request's headers must be complete within API_HEADER_TIMEOUT_SECONDS of their first byte, or
  the connection is answered 408 `header_timeout` and closed. (The body's deadline is a middleware:
  api/middleware.py.) An idle keep-alive connection is closed after API_KEEPALIVE_TIMEOUT_SECONDS.
- At most API_MAX_CONNECTIONS connections are open in this process (fewer if the open-file limit
  is lower). A new connection beyond that takes the place of the one that has waited longest
  without a complete request (idle keep-alive, or headers trickling in; one that has sent nothing
  yet goes last), so slow clients cannot starve the others; only when every connection is inside
  a request is the new one answered 503 `too_many_connections` at once.
- The 400 that aiohttp's parser answers before any middleware runs is our JSON error (`bad_request`),
  and neither the answer nor the log quotes what was sent.

This is aiohttp's own server with its supported extension points: a `web.BaseSite` that creates the
listening socket with our protocol factory, and a `web.RequestHandler` whose `handle_error` and
`log_access` hooks we override. One private attribute is read, `RequestHandler._messages` (the
parsed requests not yet handled), because nothing public says "a whole request has arrived".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest

from api.errors import (
    HeaderTimeout,
    TooManyConnections,
    protocol_error,
    raw_response,
    render,
)
from shared.logs import OncePerInterval
from shared.settings import Settings

log = structlog.get_logger("api.server")

# Connections the kernel holds for accept(): a burst of new clients waits there rather than having
# its handshakes dropped (and retried a second or more later). The kernel caps it (somaxconn).
LISTEN_BACKLOG = 1024
# asyncio accepts up to this many connections per turn of the loop, before the guard sees any.
ACCEPT_BATCH = 32
# Each connection may hold a Redis connection of its own while it is served; the process needs a
# few files besides (the listening socket, logs, the Redis pools, lingering refusals below); and a
# turn's accepts hold ACCEPT_BATCH files before the guard runs, while the connections it sheds for
# them keep theirs until the loop's next turn. The cap leaves room for all of it, so the api never
# runs out of files (asyncio would then stop accepting anyone for a second).
FILES_KEPT_FREE = 32
FILES_PER_CONNECTION = 2
# A refused connection gets its 503, then this long to read it before the socket is closed (closing
# at once, with its request unread, would reset the connection and lose the answer).
REFUSAL_LINGER_SECONDS = 1.0
MAX_LINGERING_REFUSALS = 16
# aiohttp reads a shutdown timeout of 0 as "wait forever"; SHUTDOWN_GRACE_SECONDS=0 means "do not wait".
MIN_SHUTDOWN_TIMEOUT_SECONDS = 0.001
PARENT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class ServeLimits:
    max_connections: int
    header_timeout_seconds: float
    keepalive_timeout_seconds: float

    @classmethod
    def for_this_process(cls, settings: Settings) -> ServeLimits:
        """The settings' limits, the connection cap lowered if the open-file limit cannot hold it."""
        open_files = raise_open_file_limit()
        spare = open_files - FILES_KEPT_FREE - 2 * ACCEPT_BATCH
        fitting = max(1, spare // FILES_PER_CONNECTION)
        cap = min(settings.api_max_connections, fitting)
        if cap < settings.api_max_connections:
            log.warning(
                "connection cap lowered to fit the open-file limit",
                api_max_connections=settings.api_max_connections,
                open_file_limit=open_files,
                max_connections=cap,
            )
        return cls(
            max_connections=cap,
            header_timeout_seconds=settings.api_header_timeout_seconds,
            keepalive_timeout_seconds=settings.api_keepalive_timeout_seconds,
        )


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit, as servers do; the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectionGuard:
    """The protocol factory of one listening socket: counts connections and keeps the cap.

    Connections are either waiting (no whole request yet: new, idle between requests, or sending
    headers) or busy (a request is being handled). Waiting ones are kept in the order they began
    to wait, so making room starts from the first of them.
    """

    def __init__(self, server: web.Server, limits: ServeLimits, handler_options: dict[str, Any]) -> None:
        self.server = server
        self.limits = limits
        self._handler_options = handler_options
        self._open: set[GuardedRequestHandler] = set()
        self._waiting: OrderedDict[GuardedRequestHandler, None] = OrderedDict()
        self._lingering_refusals = 0
        self._log = OncePerInterval()

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._open) >= self.limits.max_connections and not self._room_for_one_more():
            return Refusal(self)
        handler = GuardedRequestHandler(self.server, guard=self, **self._handler_options)
        # Counted from here, not from connection_made: several accepts can come before the first
        # connection_made runs, and each must see the others.
        self._open.add(handler)
        self._waiting[handler] = None
        return handler

    def _room_for_one_more(self) -> bool:
        """At the cap: close the connection that has waited longest without a whole request.

        One that has sent nothing yet goes last: it may be a client whose request is on its way,
        accepted in the same burst as the newcomer, whereas a slow client has shown itself by
        sending its bytes slowly. Only with every connection inside a request is there no room.
        """
        victim = next((handler for handler in self._waiting if handler.heard_from), None)
        if victim is None:
            victim = next(iter(self._waiting), None)
        if victim is None:
            self.note("refused", "connection refused with 503: every connection is inside a request")
            return False
        del self._waiting[victim]
        self._open.discard(victim)
        victim.force_close()
        self.note("shed", "connection closed to make room: it had waited longest without a request")
        return True

    def is_waiting(self, handler: GuardedRequestHandler) -> bool:
        return handler in self._waiting

    def waiting(self, handler: GuardedRequestHandler) -> None:
        if handler in self._open:
            self._waiting[handler] = None
            self._waiting.move_to_end(handler)

    def busy(self, handler: GuardedRequestHandler) -> None:
        self._waiting.pop(handler, None)

    def lost(self, handler: GuardedRequestHandler) -> None:
        self._open.discard(handler)
        self._waiting.pop(handler, None)

    def refusal_lingers(self) -> bool:
        if self._lingering_refusals >= MAX_LINGERING_REFUSALS:
            return False
        self._lingering_refusals += 1
        return True

    def refusal_done(self) -> None:
        self._lingering_refusals -= 1

    def note(self, kind: str, message: str) -> None:
        """One line per kind of connection trouble per interval, however often it happens."""
        held_back = self._log.admit(kind)
        if held_back is not None:
            log.warning(
                message,
                kind=kind,
                more_not_logged=held_back,
                open_connections=len(self._open),
                max_connections=self.limits.max_connections,
            )

    def note_protocol_error(self, status: int, exc: BaseException | None) -> None:
        """A request aiohttp refused: its kind and status, never its content (it may hold a key)."""
        kind = type(exc).__name__ if exc is not None else "none"
        held_back = self._log.admit(f"protocol:{status}:{kind}")
        if held_back is None:
            return
        if status >= 500 and exc is not None:
            # Our own code failed outside the error middleware: worth a traceback, once per interval.
            log.error(
                "request failed in the server",
                status=status,
                error=kind,
                more_not_logged=held_back,
                exc_info=exc,
            )
        else:
            log.info("malformed request refused", status=status, error=kind, more_not_logged=held_back)


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, telling the guard when it waits and when it serves."""

    __slots__ = ("_guard", "_header_timer", "heard_from")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **options: Any) -> None:
        super().__init__(manager, **options)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self.heard_from = False  # it has sent something: slow headers, or idle after an answer

    def data_received(self, data: bytes) -> None:
        self.heard_from = True
        guard = self._guard
        was_waiting = guard.is_waiting(self)
        super().data_received(data)
        if not was_waiting:
            return
        if self._messages:  # a whole request (or the parser's refusal of one) is in
            self._stop_header_timer()
            guard.busy(self)
        elif self._header_timer is None and self.transport is not None and data:
            self._header_timer = asyncio.get_running_loop().call_later(
                guard.limits.header_timeout_seconds, self._headers_too_slow
            )

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        super().log_access(request, response, time)
        body = request.content
        if body.is_eof():
            self._waiting_unless_queued()
        else:  # aiohttp reads the rest of the body first (lingering), so not idle yet
            body.on_eof(self._waiting_unless_queued)

    def _waiting_unless_queued(self) -> None:
        if not self._messages:  # else a pipelined request is next, and it is whole already
            self._guard.waiting(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._guard.lost(self)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own answers (a parser error, a failure past every middleware), as our JSON.

        `message` is aiohttp's text for the caller, which quotes the request: it is not used.
        """
        self._guard.note_protocol_error(status, exc)
        if request.writer.output_size > 0:
            # As aiohttp does: an answer is already on its way, so this connection is beyond saving.
            raise ConnectionError("response already started; cannot send the error")
        response = render(protocol_error(status, exc))
        response.force_close()
        return response

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is not None and self._guard.is_waiting(self):
            self._guard.note("header_timeout", "connection closed: its headers did not arrive in time")
            self.transport.write(raw_response(HeaderTimeout()))
            self.force_close()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class Refusal(asyncio.Protocol):
    """A connection past the cap when nothing can make room: 503, then closed."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        transport.write(raw_response(TooManyConnections(headers={"Retry-After": "1"})))
        if not (transport.can_write_eof() and self._guard.refusal_lingers()):
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        """The request is not read: the answer does not depend on it."""

    def eof_received(self) -> bool:
        return False  # the client has read and closed: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._lingering:
            self._lingering = False
            self._guard.refusal_done()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    __slots__ = ("_host", "_limits", "_port", "_reuse_port", "guard")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ServeLimits,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=ACCEPT_BATCH)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._limits = limits
        self.guard: ConnectionGuard | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self.guard = ConnectionGuard(
            server,
            self._limits,
            {
                "loop": loop,
                "keepalive_timeout": self._limits.keepalive_timeout_seconds,
                "access_log": None,  # request_context logs each request once, with its request_id
            },
        )
        sock = _bound_socket(self._host, self._port, reuse_port=self._reuse_port)
        # The loop listens with its backlog, which is also how many it accepts per turn; the
        # kernel's queue is then made deeper on the same socket.
        self._server = await loop.create_server(self.guard, sock=sock, backlog=self._backlog)
        sock.listen(LISTEN_BACKLOG)


class CannotListen(Exception):
    """The api's address cannot be listened on; the message names it and the settings to change."""


def check_can_listen(host: str, port: int) -> None:
    """Fail with CannotListen now, before anything starts, if API_HOST:API_PORT cannot be bound.

    A server elsewhere could still take the port before the api binds it; the bind then fails the
    same way, later.
    """
    _bound_socket(host, port, reuse_port=False).close()


def _bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to the first address `host` resolves to (as the api listens on one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"API_HOST {host!r} is not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "it is already in use (another api, or `luma-queue dev`, may be running)"
        elif exc.errno == errno.EACCES:
            why = "this user may not listen on it (ports below 1024 need privileges)"
        else:
            why = exc.strerror or str(exc)
        raise CannotListen(
            f"cannot listen on {host}:{port}: {why}; set API_PORT (or API_HOST) to another"
        ) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    app: web.Application,
    settings: Settings,
    *,
    reuse_port: bool = False,
    stop_signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    parent_pid: int | None = None,
) -> None:
    """Serve `app` until a stop signal (or the parent's exit); requests in flight then get
    SHUTDOWN_GRACE_SECONDS to finish."""
    limits = ServeLimits.for_this_process(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=max(settings.shutdown_grace_seconds, MIN_SHUTDOWN_TIMEOUT_SECONDS),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in stop_signals:
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(_stop_when_orphaned(parent_pid, stop)) if parent_pid else None
    await runner.setup()
    try:
        site = GuardedSite(runner, settings.api_host, settings.api_port, limits, reuse_port=reuse_port)
        await site.start()
        log.info(
            "api listening",
            host=settings.api_host,
            port=settings.api_port,
            max_connections=limits.max_connections,
            pid=os.getpid(),
        )
        await stop.wait()
        log.info("api stopping", pid=os.getpid())
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """One of several api processes stops when the process that started it is gone."""
    # Nothing signals a parent's death portably, so look: getppid() changes once it is gone.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_SECONDS)
    log.warning("the api's parent process is gone; stopping", parent_pid=parent_pid)
    stop.set()
