"""Turning request input into typed values, or into the 4xx that says what was wrong."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from api.appkeys import SETTINGS
from api.errors import BadRequest, InvalidJson, InvalidQuery, TooLarge, UnsupportedMediaType, invalid_fields

Model = TypeVar("Model", bound=BaseModel)

JSON_TYPE = "application/json"


async def json_object(request: web.Request, *, max_bytes: int | None = None) -> dict[str, Any]:
    """The body as a JSON object, sent as application/json and at most `max_bytes` long.

    `max_bytes` defaults to CREATE_MAX_BODY_BYTES; an endpoint with larger bodies (batch) passes
    its own. A body past the limit is refused before it is read whole: at once from its
    Content-Length, or as soon as a chunked body goes past it.
    """
    limit = request.app[SETTINGS].create_max_body_bytes if max_bytes is None else max_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    if request.content_type != JSON_TYPE:
        raise UnsupportedMediaType
    raw = await _read_at_most(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJson(f"the body must be a JSON object, not {type(body).__name__}")
    return body


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    data = bytearray()
    try:
        while chunk := await request.content.readany():
            data.extend(chunk)
            if len(data) > limit:
                raise TooLarge(f"the request body is larger than the limit of {limit} bytes")
    except RequestPayloadError:  # bad chunking, or fewer bytes than Content-Length said
        raise BadRequest("the request body is malformed (chunked encoding or Content-Length)") from None
    return bytes(data)


async def body_as(
    request: web.Request, model: type[Model], *, max_bytes: int | None = None, **context: Any
) -> Model:
    """The JSON body (at most `max_bytes`, default CREATE_MAX_BODY_BYTES) validated as `model`
    (with `context` for settings-bound checks); a 400 names every bad field."""
    body = await json_object(request, max_bytes=max_bytes)
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
