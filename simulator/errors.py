"""Error answers in the two dialects the upstream speaks: FastAPI JSON (API) and S3 XML (storage)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from simulator.schemas import RequestInvalid
from simulator.state import AccountConflict, AccountNotFound, SimulatorError


class ApiError(Exception):
    """Raised by a handler; rendered as FastAPI's `{"detail": ...}` with `status`."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def json_error(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers)


def render(exc: ApiError | RequestInvalid | SimulatorError) -> web.Response:
    """The one mapping from raised errors to answers, used by the middleware."""
    if isinstance(exc, ApiError):
        return json_error(exc.status, exc.detail, exc.headers)
    if isinstance(exc, RequestInvalid):
        return json_error(422, exc.detail)
    if isinstance(exc, AccountNotFound):
        return json_error(404, f"Account not found: {exc}")
    if isinstance(exc, AccountConflict):
        return json_error(409, str(exc))
    return json_error(400, str(exc))


def s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")
