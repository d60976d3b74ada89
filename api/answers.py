"""The shapes of the api's answers, as pydantic models: what /openapi.json says each route returns.

Requests are validated by the models in shared/models.py (and the route modules' own); answers
are built as dicts by the handlers (record.view(), delivery_view(), ...). These models describe
those dicts, and the schemathesis run in the suite (tests/api/test_fuzz.py) checks every answer
the live api gives against them, so a field added to a view without its model fails a test.
Models whose answers may carry more than they name (a generation passes the upstream's unknown
fields through) allow extra fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.accounts import AccountView
from shared.states import Phase, State


class Open(BaseModel):
    """An answer that may carry fields beyond those it names."""

    model_config = ConfigDict(extra="allow")


class Error(Open):
    """Every error of the api: a readable message and a machine-readable code (api/errors.py).

    A 400 that names bad fields adds `errors`, one `{field, message, type}` per field.
    """

    message: str
    code: str


class RelayErrorDetail(Open):
    reason: str
    code: str


class RelayError(BaseModel):
    """Errors of the /luma/* routes, in the Go relay's shape."""

    detail: RelayErrorDetail


class Video(Open):
    url: str | None = None
    download_url: str | None = None


class Generation(Open):
    """One generation as a caller sees it: the upstream's object with our fields on top."""

    id: str
    prompt: str
    state: State
    created_at: str
    video: Video | None
    liked: bool | None
    estimate_wait_seconds: float | None
    queue_position: int | None
    failure_reason: str | None
    failure_message: str | None
    aspect_ratio: str
    image: str | None
    image_end: str | None
    upstream_id: str | None
    callback_url: str | None
    batch_id: str | None
    provider: str | None
    model: str | None
    resolution: str | None
    duration: str | None
    extend_of: str | None


class GenerationAnswer(BaseModel):
    data: Generation


class GenerationList(BaseModel):
    data: list[Generation]


class Created(BaseModel):
    """A create (or an extend): the new generation, in a list as the seed answered."""

    message: Literal["Success"]
    data: list[Generation]


class BatchCreated(Created):
    batch_id: str | None


class Subscription(Open):
    active: bool | None = None
    plan: str | None = None
    type: str | None = None


class Usage(Open):
    """The pool's usage, summed over web accounts; the admin also gets a row per account."""

    consumed: int
    capacity: int
    available: int
    subscription: Subscription
    plans: list[dict[str, Any]]
    credit_balance: int | None = Field(default=None, description="official accounts' credit, in cents")
    accounts: list[AccountView] | None = Field(default=None, description="the admin's view only")


class UsageAnswer(BaseModel):
    data: Usage


class AccountAnswer(BaseModel):
    data: AccountView


class AccountList(BaseModel):
    data: list[AccountView]


class RemovedAccount(BaseModel):
    name: str
    removed: bool
    rerouted: list[str] = Field(description="ids of the generations sent back to the queue")
    configured: bool = Field(
        description="it comes from LUMA_ACCOUNTS or ACCESS_TOKEN, so the next worker start puts it back"
    )


class RemovedAccountAnswer(BaseModel):
    data: RemovedAccount


class GenerationEventView(BaseModel):
    """One transition of a generation; the admin also sees `owner` and `account`."""

    id: str
    generation_id: str
    from_: Phase | None = Field(alias="from")
    to: Phase
    prev_state: State | None
    state: State
    at: str
    failure_reason: str | None
    batch_id: str | None
    owner: str | None = None
    account: str | None = None


class GenerationEventList(BaseModel):
    data: list[GenerationEventView]


class AdminGenerationEvent(GenerationEventView):
    kind: Literal["generation"]


class AdminAccountEvent(BaseModel):
    kind: Literal["account"]
    id: str
    account: str
    from_: str = Field(alias="from")
    to: str
    reason: str
    at: int = Field(description="milliseconds since the epoch")


class AdminEventList(BaseModel):
    data: list[AdminGenerationEvent | AdminAccountEvent]


class Attempt(BaseModel):
    attempt: int
    at: str | None
    status: int | None
    error: str | None
    outcome: str
    next_attempt_at: str | None
    superseded: bool


class Delivery(BaseModel):
    """One event's webhook: where it stands, and every attempt made."""

    webhook_id: str
    type: str
    timestamp: str
    state: Literal["pending", "delivered", "given_up"]
    next_attempt_at: str | None
    given_up_reason: str | None
    attempts: list[Attempt]


class DeliveryList(BaseModel):
    data: list[Delivery]


class Redelivered(BaseModel):
    message: Literal["Queued"]
    data: list[Delivery]


class Secret(BaseModel):
    secret: str = Field(pattern=r"^whsec_")


class SecretAnswer(BaseModel):
    data: Secret


class Holder(BaseModel):
    owner: str
    waiting: int
    creates_last_minute: int
    max_queued: int
    creates_per_minute: int
    overridden: list[str]


class HolderAnswer(BaseModel):
    data: Holder


class HolderList(BaseModel):
    data: list[Holder]


class UploadSlot(BaseModel):
    id: str
    presigned_url: str
    public_url: str


class UploadAnswer(BaseModel):
    data: UploadSlot


class UploadForm(BaseModel):
    """The multipart body of an upload: one image file."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class Health(BaseModel):
    status: Literal["ok"]


class ReadyCheck(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    """Whether this api should get creates: Redis answers and an account can take work."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, ReadyCheck]


class Acknowledged(BaseModel):
    message: Literal["ok"]


class DownloadLink(BaseModel):
    url: str


class RelayUser(BaseModel):
    id: str
    name: str
    display_name: str
    email: None
    avatar: None
