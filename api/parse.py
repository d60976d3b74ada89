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


async def body_as(request: web.Request, model: type[Model]) -> Model:
    """The JSON body validated as `model`; a 400 names every bad field."""
    body = await json_object(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_fields(exc) from None


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """A query parameter given at most once, written as plain digits, within [low, high]."""
    values = request.query.getall(name, [])
    if not values:
        return default
    text = values[0]
    plain = len(values) == 1 and text.isascii() and text.isdigit() and len(text) <= 18
    if plain and low <= int(text) <= high:
        return int(text)
    shown = text if len(values) == 1 else ",".join(values)
    raise InvalidQuery(f"{name} must be one integer from {low} to {high}, got {shown[:40]!r}")
