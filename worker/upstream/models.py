"""What every upstream provider answers, typed: the rest of the worker sees only these.

A provider normalizes its own protocol into them (states, where the video URL is, what the
failure said) and keeps the upstream object verbatim in `raw`, which the record stores as is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

UpstreamState = Literal["pending", "processing", "completed", "failed"]


class UpstreamGeneration(BaseModel):
    """One generation as the upstream reports it."""

    id: str
    prompt: str | None = None
    # pending: in the upstream's own queue; processing: rendering (also any state we do not
    # know: a live one, keep following it); completed and failed are the upstream's word.
    state: UpstreamState
    created_ts: float | None = None  # when the upstream made it, by its clock
    video_url: str | None = None
    failure_message: str | None = None
    raw: dict[str, Any] = Field(repr=False)


class UpstreamUsage(BaseModel):
    """An account's capacity as the upstream counts it: generations on a web account, cents of
    credit on an official one (which has no capacity or consumed count: None)."""

    available: int
    capacity: int | None
    consumed: int | None
    raw: dict[str, Any] = Field(repr=False)


class UploadSlot(BaseModel):
    """An image put on an account: `public_url` serves it, to generations of that account."""

    id: str
    presigned_url: str
    public_url: str
