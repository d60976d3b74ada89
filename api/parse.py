"""Turning request input into typed values, or into the 400 that says what was wrong."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.errors import InvalidJson, InvalidQuery, invalid_fields

Model = TypeVar("Model", bound=BaseModel)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; aiohttp bounds its size by the app's client_max_size (413)."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJson(f"the body must be a JSON object, not {type(body).__name__}")
    return body


async def body_as(request: web.Request, model: type[Model], **context: Any) -> Model:
    """The JSON body validated as `model` (with `context` for settings-bound checks); a 400 names
    every bad field."""
    body = await json_object(request)
    try:
        return model.model_validate(body, context=context or None)
    except ValidationError as exc:
        raise invalid_fields(exc) from None


def query_as(request: web.Request, model: type[Model], **context: Any) -> Model:
    """The query string validated as `model`; a parameter given twice is a list, so it fails an
    int or str field (a 400 names it, with code invalid_query)."""
    values: dict[str, Any] = {}
    for name in request.query:
        given = request.query.getall(name)
        values[name] = given[0] if len(given) == 1 else given
    try:
        return model.model_validate(values, context=context)
    except ValidationError as exc:
        error = invalid_fields(exc)
        message = error.message.replace("invalid request", "invalid query", 1)
        raise InvalidQuery(message, **error.detail) from None
