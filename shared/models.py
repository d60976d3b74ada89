"""Pydantic models that cross a boundary: caller requests, stored records, what callers see."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_serializer,
    field_validator,
    model_validator,
)

from shared.pricing import Duration, Model, Resolution
from shared.settings import ApiKeyLine, CookieLine
from shared.states import PUBLIC_STATE, TERMINAL_PHASES, Phase, State

# Re-exported: code that only needs a record's vocabulary imports it from here.
from shared.states import FailureReason as FailureReason

TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed"})

# Phases written by earlier versions, read as the phase that means the same today.
_LEGACY_PHASES = {
    "running": {"processing": Phase.PROCESSING},
    "done": {"completed": Phase.COMPLETED},
}
_LEGACY_DEFAULT = {"running": Phase.QUEUED_UPSTREAM, "done": Phase.FAILED}


def utc_iso(ts: float | None = None) -> str:
    """Timestamps in the upstream's own format: `2024-06-20T06:02:26.278000Z`."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return str(uuid.uuid4())


def http_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value.startswith(("http://", "https://")) or len(value) > 2048 or " " in value:
        raise ValueError("must be an http(s) URL")
    return value


Provider = Literal["web", "official"]


class ImageKeyframe(BaseModel):
    """A keyframe of the official API naming an image (a generation is continued by extend)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image"]
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        checked = http_url(value)
        assert checked is not None
        return checked


class Keyframes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame0: ImageKeyframe | None = None
    frame1: ImageKeyframe | None = None


class CreateRequest(BaseModel):
    """The body of POST /api/generations/create: the seed's fields plus the upstream's options.

    `provider` picks the kind of account (web or official) that may run it; `model`,
    `resolution`, `duration` and `keyframes` are the official API's options, so a create that
    names any of them runs on an official account (`provider` becomes "official"). Keyframes
    are another spelling of `image` (frame0) and `image_end` (frame1).
    """

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    prompt: str = Field(min_length=1, max_length=5000)
    image: str | None = None
    image_end: str | None = None
    aspect_ratio: str = Field(default="16:9", pattern=r"^\d{1,2}:\d{1,2}$")
    expand_prompt: bool = True
    loop: bool | None = None
    # Where this generation's webhooks go (worker/webhooks.py); checked against private networks.
    callback_url: str | None = None
    # Not submitted upstream within this long: it fails `start_deadline_exceeded` instead.
    start_deadline_seconds: float | None = Field(default=None, gt=0, le=30 * 86400)
    provider: Provider | None = None
    model: Model | None = None
    resolution: Resolution | None = None
    duration: Duration | None = None
    keyframes: Keyframes | None = Field(default=None, exclude=True)

    @field_validator("image", "image_end")
    @classmethod
    def _image_urls(cls, value: str | None) -> str | None:
        # An empty image is a client's mistake (a form field left blank), not "no image": taken
        # as none, the video would silently start from nothing.
        if value == "":
            raise ValueError("is empty; leave the field out (or null) for a generation without an image")
        return http_url(value)

    @field_validator("callback_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return http_url(value or None)

    @field_validator("keyframes", mode="before")
    @classmethod
    def _no_generation_keyframes(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for frame in value.values():
                if isinstance(frame, dict) and frame.get("type") == "generation":
                    raise ValueError(
                        "a generation keyframe continues a generation: POST /api/generations/{id}/extend"
                    )
        return value

    @model_validator(mode="after")
    def _route(self) -> CreateRequest:
        """Keyframes as images; official-only options send the create to an official account."""
        if self.keyframes is not None:
            for frame, field in (("frame0", "image"), ("frame1", "image_end")):
                keyframe = getattr(self.keyframes, frame)
                if keyframe is None:
                    continue
                if getattr(self, field) not in (None, keyframe.url):
                    raise ValueError(f"keyframes.{frame} and {field} name different images")
                setattr(self, field, keyframe.url)
        official_only = [
            name
            for name in ("model", "resolution", "duration", "keyframes")
            if getattr(self, name) is not None
        ]
        if official_only:
            if self.provider == "web":
                raise ValueError(f"{', '.join(official_only)}: only official accounts take these options")
            self.provider = "official"
        return self


class BatchRequest(BaseModel):
    """The body of POST /api/generations/batch: many creates at once, all or nothing.

    The bound on the number of items is a setting (BATCH_MAX_ITEMS): validate with context
    {"max_items": n}. A batch's `callback_url` is each item's unless the item names its own.
    """

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    items: list[CreateRequest] = Field(min_length=1)
    callback_url: str | None = None

    @field_validator("callback_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value or None)

    @field_validator("items")
    @classmethod
    def _within_setting(cls, value: list[CreateRequest], info: ValidationInfo) -> list[CreateRequest]:
        bound = (info.context or {}).get("max_items")
        if bound is not None and len(value) > bound:
            raise ValueError(f"at most {bound} items in one batch, got {len(value)}")
        return value

    def creates(self) -> list[CreateRequest]:
        """The items as creates, each with its callback_url (its own, else the batch's)."""
        return [
            item
            if item.callback_url or not self.callback_url
            else item.model_copy(update={"callback_url": self.callback_url})
            for item in self.items
        ]


# No caller pages this far; the bound keeps Redis's range arithmetic within 64 bits.
LIST_MAX_OFFSET = 2**53


# Ids we hand out (uuid4) and batch ids: what a query may name.
_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
IDS_MAX = 100


def _comma_list(value: object) -> object:
    """`a,b` (or a parameter given twice) as a list; blanks dropped."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RemoveAccountQuery(BaseModel):
    """The query of DELETE /api/admin/accounts/{name}: `force` reroutes what is in flight there."""

    model_config = ConfigDict(extra="ignore")

    force: bool = Field(
        default=False,
        description="send its in-flight generations back to the queue instead of refusing (409)",
    )


class ListQuery(BaseModel):
    """The query of GET /api/generations: a page of the caller's generations, newest first.

    `state`, `ids` and `batch_id` filter it and combine. The bound on `limit` is a setting
    (LIST_MAX_LIMIT): validate with context {"max_limit": n}.
    """

    model_config = ConfigDict(extra="ignore")

    offset: int = Field(default=0, ge=0, le=LIST_MAX_OFFSET)
    limit: int = Field(default=10, ge=1)
    state: list[State] | None = Field(default=None, min_length=1)
    ids: list[Annotated[str, Field(pattern=_ID_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=IDS_MAX
    )
    batch_id: str | None = Field(default=None, pattern=_ID_PATTERN)

    @field_validator("state", "ids", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("limit")
    @classmethod
    def _within_setting(cls, value: int, info: ValidationInfo) -> int:
        bound = (info.context or {}).get("max_limit")
        if bound is not None and value > bound:
            raise ValueError(f"must be at most {bound}")
        return value


class GenerationRecord(BaseModel):
    """One generation as stored in Redis: what the caller asked for and everything we learned.

    Stored as one flat JSON object so that the store's transition (Lua) can read and rewrite it
    in place: every field is a scalar, and the verbatim upstream object is kept as a JSON string
    inside it (`upstream`), which the transition never re-encodes. Only shared/store.py writes it.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str
    prompt: str
    aspect_ratio: str = "16:9"
    expand_prompt: bool = True
    loop: bool | None = None
    image: str | None = None
    image_end: str | None = None
    created_at: str
    created_ts: float
    callback_url: str | None = None  # where its webhooks go
    batch_id: str | None = None  # the batch it was submitted in
    start_deadline_ts: float | None = None  # must be submitted upstream by then, or it fails
    # Routing: the kind of account that must run it (None: any), and the official options.
    provider: str | None = None
    model: str | None = None
    resolution: str | None = None
    duration: str | None = None
    price_cents: int | None = None  # what it costs on an official account (shared/pricing.py)
    # An extend continues `extend_of` (ours), which is `extend_upstream_id` on `pin_account`:
    # it can run only there.
    extend_of: str | None = None
    extend_upstream_id: str | None = None
    pin_account: str | None = None

    phase: Phase = Phase.WAITING
    failure_reason: str | None = None
    failure_message: str | None = None

    account: str | None = None
    upstream_id: str | None = None
    upstream: dict[str, Any] | None = None  # the last upstream object, verbatim
    # The intent written before the paid create (worker/submit.py): a fencing token and its time.
    # The intent's account is `account`.
    fence: int | None = None
    intent_at: float | None = None
    # Copies of external images put on the account (worker/images.py), what the create sends.
    upstream_image: str | None = None
    upstream_image_end: str | None = None
    video_url: str | None = None  # where the video is, whichever shape the upstream gave it in
    download_url: str | None = None  # a web generation's watermark-free link, fetched once

    dispatch_seq: int | None = None  # global order in which generations left the queue
    started_ts: float | None = None  # took a slot
    submitted_ts: float | None = None  # created upstream
    finished_ts: float | None = None
    observed_ts: float | None = None  # the upstream last answered about it
    last_live_ts: float | None = None  # the last reading that showed it not yet ended
    completed_without_video_ts: float | None = None
    submit_attempts: int = 0

    @model_validator(mode="before")
    @classmethod
    def _read_legacy(cls, data: Any) -> Any:
        """Records of earlier versions: a nested intent, and the phases `running` and `done`."""
        if not isinstance(data, dict):
            return data
        phase = data.get("phase")
        intent = data.get("intent")
        if phase in _LEGACY_PHASES or isinstance(intent, dict):
            data = dict(data)
            if phase in _LEGACY_PHASES:
                by_state = _LEGACY_PHASES[phase]
                data["phase"] = by_state.get(data.get("state", ""), _LEGACY_DEFAULT[phase])
            elif phase == Phase.SUBMITTING and not isinstance(intent, dict):
                data["phase"] = Phase.CLAIMED
            if isinstance(intent, dict):
                data.setdefault("fence", intent.get("fence"))
                data.setdefault("intent_at", intent.get("at"))
        return data

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream_from_json(cls, value: Any) -> Any:
        # orjson: every read of a record parses its upstream object, lists ten at a time.
        return orjson.loads(value) if isinstance(value, str) else value

    @field_serializer("upstream")
    def _upstream_as_json(self, value: dict[str, Any] | None) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    @computed_field
    @property
    def state(self) -> State:
        """The public state, a function of the phase; stored too, for people reading Redis."""
        return PUBLIC_STATE[self.phase]

    @classmethod
    def new(cls, owner: str, request: CreateRequest) -> GenerationRecord:
        now = time.time()
        fields = request.model_dump(exclude={"start_deadline_seconds"})
        deadline = request.start_deadline_seconds
        return cls(
            id=new_id(),
            owner=owner,
            created_at=utc_iso(now),
            created_ts=now,
            start_deadline_ts=None if deadline is None else now + deadline,
            **fields,
        )

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def view(
        self, *, queue_position: int | None = None, estimate_wait_seconds: float | None = None
    ) -> dict[str, Any]:
        """The seed-shaped generation a caller sees: upstream fields, then ours on top.

        Unknown upstream fields (thumbnail, last_frame, ...) pass through untouched; `id` is
        always ours, because the caller had it before the upstream did.
        """
        shown: dict[str, Any] = dict(self.upstream or {})
        state = self.state
        shown.update(
            id=self.id,
            prompt=self.prompt,
            state=state,
            created_at=self.created_at,
            video=self._video() if state == "completed" else None,
            liked=shown.get("liked"),
            # Ours while it waits in our queue; once created, Luma's own estimate for its queue.
            estimate_wait_seconds=(
                estimate_wait_seconds
                if estimate_wait_seconds is not None
                else shown.get("estimate_wait_seconds")
            ),
            queue_position=queue_position,
            failure_reason=self.failure_reason,
            failure_message=self.failure_message,
            aspect_ratio=self.aspect_ratio,
            image=self.image,
            image_end=self.image_end,
            upstream_id=self.upstream_id,
            callback_url=self.callback_url,
            batch_id=self.batch_id,
            provider=self.provider,
            model=self.model,
            resolution=self.resolution,
            duration=self.duration,
            extend_of=self.extend_of,
        )
        return shown

    def _video(self) -> dict[str, Any] | None:
        """The seed's `video` object, whichever provider made it, with our watermark-free link."""
        upstream_video = (self.upstream or {}).get("video")
        video = dict(upstream_video) if isinstance(upstream_video, dict) else {}
        if self.video_url and not video.get("url"):
            video["url"] = self.video_url
        if not video:
            return None
        if self.download_url:
            video["download_url"] = self.download_url
        return video


class UploadResult(BaseModel):
    """What an upload job hands back to the api: the seed's upload shape, or an error."""

    id: str | None = None
    presigned_url: str | None = None
    public_url: str | None = None
    account: str | None = None
    error: str | None = None
    error_code: str | None = None


class HolderUpdate(BaseModel):
    """The body of PATCH /api/admin/holders/{owner}: an operator's limits for one key holder.

    A number sets the holder's own limit; null goes back to the default from settings.
    """

    model_config = ConfigDict(extra="forbid")

    max_queued: int | None = Field(default=None, ge=1)
    creates_per_minute: int | None = Field(default=None, ge=0)


class AccountUpdate(BaseModel):
    """The body of PATCH /api/admin/accounts/{name}: only the fields sent change.

    `max_queue: null` clears the account's own bound (see `model_fields_set`); `enabled`,
    `cookie`, `api_key`, `max_concurrency` and `creates_per_minute` sent as null change nothing.
    A new `cookie` (web) or `api_key` (official) revives an expired account.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    enabled: bool | None = None
    cookie: CookieLine | None = Field(default=None, min_length=1, repr=False)
    api_key: ApiKeyLine | None = Field(default=None, min_length=1, repr=False)
    max_concurrency: int | None = Field(default=None, ge=1, le=100)
    creates_per_minute: int | None = Field(default=None, ge=1, le=10_000)
    max_queue: int | None = Field(default=None, ge=0)
