"""Knobs of the Luma simulator: timings, outcome and fault rates, initial accounts.

One `SimulatorConfig` is built per process (from CLI flags or by a test) and handed to
`SimulatorState`; the state keeps that very object, so `PATCH /_sim/config` or plain attribute
assignment changes behaviour at run time. Timings are copied into each generation when it is
created, so a change affects new generations only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CAPACITY = 150


class AccountSpec(BaseModel):
    """An account present at start-up. Also accepted as a `(name, token[, capacity])` tuple."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    # repr=False: configs get logged, tokens must not be.
    token: str = Field(min_length=1, repr=False)
    capacity: int = Field(default=DEFAULT_CAPACITY, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_tuple(cls, value: Any) -> Any:
        if isinstance(value, tuple | list):
            return dict(zip(("name", "token", "capacity"), value, strict=False))
        return value


class OfficialAccountSpec(BaseModel):
    """An official Dream Machine API account present at start-up: a Bearer key and a balance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    key: str = Field(min_length=1, repr=False)
    credits_cents: int = Field(default=10_000, ge=0)
    # Luma's documented limits per key (Build tier); beyond them a create answers 429.
    max_concurrency: int = Field(default=10, ge=1)
    creates_per_minute: int = Field(default=20, ge=1)


def default_accounts() -> list[AccountSpec]:
    """The two accounts the dev stack is configured with."""
    return [
        AccountSpec(name="sim-1", token="sim-token-1"),
        AccountSpec(name="sim-2", token="sim-token-2"),
    ]


class SimulatorConfig(BaseModel):
    """Every knob of the simulator; all fields can be changed while it runs (except the accounts)."""

    # validate_assignment: a test doing `config.failure_rate = 2` should fail loudly, not misbehave.
    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    # Generation timeline: pending (Luma's own queue), then processing (rendering), then terminal.
    pending_seconds: float = Field(default=5.0, ge=0)
    processing_seconds: float = Field(default=30.0, ge=0)
    # After processing ends as completed, `video.url` stays missing this long (observed upstream).
    missing_url_seconds: float = Field(default=0.0, ge=0)
    # Share of generations that end `failed`, drawn at create from the seeded RNG.
    failure_rate: float = Field(default=0.0, ge=0, le=1)

    # Faults on the Luma API paths (/api/...), drawn per request from a second seeded RNG.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_seconds: float = Field(default=0.0, ge=0)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    # Create stores the generation, then waits this long before answering.
    hang_after_create_seconds: float = Field(default=0.0, ge=0)

    seed: int = 0
    accounts: list[AccountSpec] = Field(default_factory=default_accounts)
    # The official API (under /dream-machine/v1, Bearer keys): its accounts, whether it has the
    # newer `POST /generations/video` route (False: only `POST /generations`, as older ones),
    # the Retry-After its 429s carry (None: none), whether it calls back `callback_url`s, and
    # whether it fetches keyframe images (an unreachable one fails the generation).
    official_accounts: list[OfficialAccountSpec] = Field(default_factory=list)
    official_video_route: bool = True
    official_retry_after_seconds: float | None = Field(default=None, ge=0)
    official_callbacks: bool = True
    official_fetch_images: bool = True
    # The web API's extend route was removed in 2024 (405); True models an account that has it.
    web_extend: bool = False

    # Credentials (token, rotated sessions) stop working this long after they were issued; None
    # means never. Models the ~30 min access tokens that only Set-Cookie merging keeps alive.
    session_ttl_seconds: float | None = Field(default=None, gt=0)
    # Base of the URLs the simulator hands out (uploads, videos). None: taken from each request's
    # Host, which is right both on localhost and behind a docker service name.
    public_base_url: str | None = None
    # The request log is a ring buffer so a long benchmark cannot exhaust memory.
    request_log_limit: int = Field(default=100_000, ge=1)
    upload_url_ttl_seconds: float = Field(default=24 * 3600, gt=0)
    # Where uploads and generations' media are kept across restarts (simulator/persist.py);
    # None: in memory only, as the tests want.
    media_dir: str | None = None

    @staticmethod
    def default_accounts() -> list[AccountSpec]:
        """The dev stack's accounts: sim-1 / sim-token-1 and sim-2 / sim-token-2, capacity 150."""
        return default_accounts()

    def runtime_view(self) -> dict[str, Any]:
        """The knobs as JSON, without the initial accounts (live ones are at /_sim/accounts)."""
        return self.model_dump(exclude={"accounts", "official_accounts"})
