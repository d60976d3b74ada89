"""structlog set-up: JSON off a terminal, readable on one, and secrets never printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Field names whose values are credentials; whatever binds them, the log shows a placeholder.
_SECRET_FIELDS = frozenset(
    {"cookie", "cookies", "secret_key", "secret-key", "admin_key", "access_token", "authorization"}
)


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger (aiohttp, arq) to write the same way."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what the request middleware already logs with its request_id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
