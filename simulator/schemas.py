"""Request bodies and query strings of the Luma API, validated the way FastAPI does it.

Luma's web API is FastAPI: bad input answers 422 `{"detail": [{"type", "loc", "msg", "input"}]}`
with `loc` starting at "body" or "query". Clients parse that shape, so the simulator reproduces it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

# Video dimensions Luma returned per aspect ratio (1360x752 is the observed 16:9 size).
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "16:9": (1360, 752),
    "9:16": (752, 1360),
    "1:1": (1024, 1024),
    "4:3": (1168, 864),
    "3:4": (864, 1168),
    "21:9": (1568, 672),
    "9:21": (672, 1568),
}


class CreateGenerationBody(BaseModel):
    # FastAPI models ignore unknown fields; so does Luma with the fields clients add over time.
    model_config = ConfigDict(extra="ignore")

    user_prompt: str
    aspect_ratio: str = "16:9"
    expand_prompt: bool = False
    image_url: str | None = None
    image_end_url: str | None = None
    loop: bool = False

    @field_validator("aspect_ratio")
    @classmethod
    def _known_ratio(cls, value: str) -> str:
        if value not in ASPECT_RATIOS:
            expected = ", ".join(f"'{r}'" for r in ASPECT_RATIOS)
            raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
        return value


class ListQuery(BaseModel):
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=10, ge=1, le=100)


class FileUploadQuery(BaseModel):
    file_type: str
    filename: str


M = TypeVar("M", bound=BaseModel)


class RequestInvalid(Exception):
    """Input failed validation; `detail` is FastAPI's list of error objects."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("request validation failed")
        self.detail = detail


def _fastapi_errors(error: ValidationError, where: str) -> list[dict[str, Any]]:
    return [
        {"type": e["type"], "loc": [where, *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        for e in error.errors(include_url=False)
    ]


def parse_body(model: type[M], raw: bytes) -> M:
    """Parse a JSON body into `model` or raise RequestInvalid shaped as FastAPI would."""
    if not raw.strip():
        raise RequestInvalid([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RequestInvalid(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", getattr(exc, "pos", 0)],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": getattr(exc, "msg", str(exc))},
                }
            ]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(_fastapi_errors(exc, "body")) from None


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise RequestInvalid(_fastapi_errors(exc, "query")) from None
