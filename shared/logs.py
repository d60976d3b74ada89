"""structlog set-up: JSON off a terminal, readable on one, and secrets never printed.

Two more guards sit on the stdlib loggers of the libraries we serve with, because a caller can make
them write: aiohttp's own records lose whatever they carry of a request (an exception's message can
quote a malformed header, Secret-Key included), and asyncio's and aiohttp's records are written at
most once per kind per interval, so no client can fill the disk with them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Field names whose values are credentials; whatever binds them, the log shows a placeholder.
_SECRET_FIELDS = frozenset(
    {"cookie", "cookies", "secret_key", "secret-key", "admin_key", "access_token", "authorization"}
)

# The libraries' loggers that callers can drive; records from elsewhere pass untouched.
_LIBRARY_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.internal")
REPEAT_INTERVAL_SECONDS = 60.0


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "[redacted]"
    return event


class OncePerInterval:
    """Lets one event of each kind through per interval and counts the ones it held back.

    `admit(kind)` returns None to drop the event, or how many of that kind were dropped since the
    last one admitted (0 the first time), for the admitted line to say so.
    """

    def __init__(self, interval_seconds: float = REPEAT_INTERVAL_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}
        self._lock = threading.Lock()  # stdlib logging may be called from threads (executors)

    def admit(self, kind: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_seconds:
                self._held_back[kind] = self._held_back.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._held_back.pop(kind, 0)


class LibraryRecordFilter(logging.Filter):
    """On asyncio's and aiohttp's loggers: no request content, and each kind once per interval."""

    def __init__(self, interval_seconds: float) -> None:
        super().__init__()
        self.limiter = OncePerInterval(interval_seconds)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp"):
            _strip_request_content(record)
        held_back = self.limiter.admit(f"{record.name}:{record.levelno}:{record.msg}")
        if held_back is None:
            return False
        if held_back:
            record.msg = f"{record.msg} (and {held_back} more like it, not logged)"
        return True


def _strip_request_content(record: logging.LogRecord) -> None:
    """Keep where an aiohttp error happened, not what it says: its message may quote a header."""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        where = ""
        traceback = error.__traceback__
        while traceback is not None and traceback.tb_next is not None:
            traceback = traceback.tb_next
        if traceback is not None:
            code = traceback.tb_frame.f_code
            where = f" at {code.co_filename}:{traceback.tb_lineno} in {code.co_name}"
        record.msg = f"{record.msg} [{type(error).__name__}{where}]"
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None


def configure_logging(
    level: str = "INFO",
    json_logs: bool | None = None,
    *,
    repeat_interval_seconds: float = REPEAT_INTERVAL_SECONDS,
) -> None:
    """Configure structlog, and the stdlib root logger (aiohttp, arq) to write the same way.

    Our own lines skip the stdlib machinery: a level below LOG_LEVEL costs one method call, and a
    line is rendered by orjson and written straight to stderr (the api logs one per request, so
    this is on the hot path). The libraries' stdlib records go through the same processors.
    """
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if json_logs
            else structlog.WriteLoggerFactory(sys.stderr)
        ),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer()
                if json_logs
                else structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what the request middleware already logs with its request_id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Pillow narrates every chunk of every image it decodes at DEBUG: noise a caller can order.
    logging.getLogger("PIL").setLevel(max(logging.INFO, root.level))
    library_filter = LibraryRecordFilter(repeat_interval_seconds)
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        for old in [f for f in library_logger.filters if isinstance(f, LibraryRecordFilter)]:
            library_logger.removeFilter(old)  # configured again (tests): one filter, not two
        library_logger.addFilter(library_filter)
