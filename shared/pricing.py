"""What a create costs on an official Dream Machine API account, in US cents.

Luma bills the official API per generation by model, resolution and duration, from a prepaid
credit balance (`GET /credits`, in cents). The claim reserves a generation's price on the account
it picks and never picks one whose balance cannot pay it (worker/scheduler.py), so the price is
worked out once, when the generation is accepted, and kept on its record.

The defaults are Luma's published list prices for the Build tier (2025); an operator whose prices
differ sets OFFICIAL_PRICES (a JSON object of the same shape) to replace any of them.
"""

from __future__ import annotations

from typing import Literal

Model = Literal["ray-2", "ray-flash-2", "ray-1-6"]
Resolution = Literal["540p", "720p", "1080p", "4k"]
Duration = Literal["5s", "9s"]

MODELS: tuple[Model, ...] = ("ray-2", "ray-flash-2", "ray-1-6")
DEFAULT_MODEL: Model = "ray-2"
DEFAULT_RESOLUTION: Resolution = "720p"
DEFAULT_DURATION: Duration = "5s"
# ray-1-6 takes no resolution or duration: one price for whatever it makes.
FIXED_OUTPUT_MODELS: frozenset[str] = frozenset({"ray-1-6"})

# "model" or "model:resolution:duration" -> cents.
LIST_PRICES_CENTS: dict[str, int] = {
    "ray-2:540p:5s": 40,
    "ray-2:540p:9s": 72,
    "ray-2:720p:5s": 71,
    "ray-2:720p:9s": 127,
    "ray-2:1080p:5s": 159,
    "ray-2:1080p:9s": 287,
    "ray-2:4k:5s": 637,
    "ray-2:4k:9s": 1147,
    "ray-flash-2:540p:5s": 14,
    "ray-flash-2:540p:9s": 25,
    "ray-flash-2:720p:5s": 24,
    "ray-flash-2:720p:9s": 44,
    "ray-flash-2:1080p:5s": 55,
    "ray-flash-2:1080p:9s": 99,
    "ray-flash-2:4k:5s": 219,
    "ray-flash-2:4k:9s": 394,
    "ray-1-6": 35,
}


def price_key(model: str | None, resolution: str | None, duration: str | None) -> str:
    """The table's key for a create's options, the defaults filling what it left out."""
    model = model or DEFAULT_MODEL
    if model in FIXED_OUTPUT_MODELS:
        return model
    return f"{model}:{resolution or DEFAULT_RESOLUTION}:{duration or DEFAULT_DURATION}"


def price_cents(
    table: dict[str, int], model: str | None, resolution: str | None, duration: str | None
) -> int:
    """What the create costs by `table` (the list prices filling what it lacks)."""
    key = price_key(model, resolution, duration)
    return table.get(key, LIST_PRICES_CENTS.get(key, max(LIST_PRICES_CENTS.values())))
