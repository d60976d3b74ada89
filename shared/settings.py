"""Settings, read once per process from the environment (and an optional `.env`) and passed down."""

from __future__ import annotations

from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.cookies import normalize_cookie
from shared.pricing import (
    DEFAULT_DURATION,
    DEFAULT_MODEL,
    DEFAULT_RESOLUTION,
    LIST_PRICES_CENTS,
    Duration,
    Model,
    Resolution,
    price_cents,
)

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
LUMA_WEB_API = "https://internal-api.virginia.labs.lumalabs.ai"
# Room between a blocking Redis call's own timeout and the socket timeout: the round trip and a
# busy event loop must not turn a blocking call's normal end into a socket timeout.
BLOCKING_CALL_MARGIN_SECONDS = 0.5
# How long a reader of the event log (the api's live tail, a worker's webhook consumer) blocks
# in one XREAD: fixed, so the socket timeout must leave it room like the other blocking calls.
EVENT_LOG_BLOCK_SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB


def _header_line(value: str, what: str) -> str:
    """A credential that can go into a header as it is: one line of printable ASCII.

    Anything else (CR/LF above all) would be refused by the HTTP client on every request, or worse,
    split the header; the message never repeats the value, which is a credential.
    """
    value = value.strip()  # a pasted value's trailing newline is harmless, an inner one is not
    if not value:
        raise ValueError(f"{what} is empty")
    if not all(" " <= char <= "~" for char in value):
        raise ValueError(f"{what} must be one line of printable ASCII (no CR, LF or control characters)")
    return value


def _cookie_line(value: str) -> str:
    return _header_line(value, "the cookie")


def _api_key_line(value: str) -> str:
    return _header_line(value, "the api_key")


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host: where a worker may send an account's cookie."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if not all(" " < char <= "~" for char in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


#: An account's cookie, validated where it enters (settings and the admin API).
CookieLine = Annotated[str, AfterValidator(_cookie_line)]
ApiKeyLine = Annotated[str, AfterValidator(_api_key_line)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _origin(value: str) -> str:
    """`*`, or a browser origin (`scheme://host[:port]`, nothing after it), lower-cased."""
    if value == "*":
        return value
    parts = urlsplit(value.lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"CORS_ORIGINS: {value!r} is not an origin like https://app.example.com")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"CORS_ORIGINS: {value!r} is not an origin like https://app.example.com")
    return f"{parts.scheme}://{parts.netloc}"


LUMA_OFFICIAL_API = "https://api.lumalabs.ai/dream-machine/v1"

AccountKind = Literal["web", "official"]
# The official API's documented limits per key (Build tier): concurrent video generations, and
# creates in any minute. A web session has no documented limit; comparable gateways use 3.
DEFAULT_CONCURRENCY: dict[str, int] = {"web": 3, "official": 10}
OFFICIAL_CREATES_PER_MINUTE = 20


class AccountConfig(BaseModel):
    """One Luma account as an operator configures it.

    `kind` says which protocol it speaks (worker/upstream/): `web`, a logged-in browser session
    behind a `cookie`; `official`, the Dream Machine API behind an `api_key` (a Bearer token).
    Neither credential is ever shown, logged or echoed.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: AccountKind = "web"
    cookie: CookieLine | None = Field(default=None, min_length=1, repr=False)
    api_key: ApiKeyLine | None = Field(default=None, min_length=1, repr=False)
    base_url: HttpUrl | None = Field(default=None, max_length=2048)
    # Unset: 3 for a web session, 10 for an official key (its documented limit).
    max_concurrency: int | None = Field(default=None, ge=1, le=100)
    # Creates in any sliding minute, across every worker; unset: 20 for an official key (its
    # documented limit), no limit for a web session.
    creates_per_minute: int | None = Field(default=None, ge=1, le=10_000)
    # How many generations may wait in the pool's queue on this account's behalf; None = no
    # limit of its own (the pool's MAX_QUEUE_DEPTH still holds).
    max_queue: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _credential_of_its_kind(self) -> AccountConfig:
        if self.kind == "web" and (not self.cookie or self.api_key):
            raise ValueError("a web account takes a `cookie` (and no `api_key`)")
        if self.kind == "official" and (not self.api_key or self.cookie):
            raise ValueError("an official account takes an `api_key` (and no `cookie`)")
        if self.max_concurrency is None:
            self.max_concurrency = DEFAULT_CONCURRENCY[self.kind]
        if self.creates_per_minute is None and self.kind == "official":
            self.creates_per_minute = OFFICIAL_CREATES_PER_MINUTE
        return self

    @property
    def credential(self) -> str:
        """The cookie or the API key, whichever the kind takes."""
        return (self.cookie if self.kind == "web" else self.api_key) or ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # How long any Redis call may go unanswered before it fails (and the api answers 503): a
    # frozen or cut-off Redis is a fast error, not a hang. Blocking calls must end well within it.
    redis_socket_timeout_seconds: float = Field(default=2.0, gt=0)
    # Redis Sentinel, comma-separated host:port: when set, every process asks these sentinels which
    # Redis is the primary of REDIS_SENTINEL_MASTER (and follows a failover); REDIS_URL then gives
    # only the database number and password.
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = Field(default="mymaster", min_length=1)
    # A create answers 2xx only once this many replicas have its write (Redis WAIT), so a failover
    # right after cannot lose it; 0 = do not wait. REDIS_REPLICA_ACK_TIMEOUT_SECONDS bounds the wait.
    redis_min_replicas_acked: int = Field(default=0, ge=0)
    redis_replica_ack_timeout_seconds: float = Field(default=1.0, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # An api without SECRET_KEY serves anyone who reaches it, and spends the pool's paid credits:
    # on any address but loopback it refuses to start unless this says it is meant.
    allow_open_api: bool = False

    # How the api serves (README, "Security"): processes on one port, and what one process allows
    # each connection before it is closed or refused.
    api_processes: int = Field(default=1, ge=1, le=64)
    # Lowered at start to fit the open-file limit (api/server.py says how).
    api_max_connections: int = Field(default=1000, ge=1)
    # From a request's first byte until its headers are complete.
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    # From the headers until the whole body is in: long enough for an upload from a slow link.
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # An idle keep-alive connection is closed after this; above a load balancer's usual 60 s.
    api_keepalive_timeout_seconds: float = Field(default=75.0, gt=0)
    # "auto": uvloop when it is installed (`pip install 'luma-queue[uvloop]'`), else asyncio's.
    api_event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # Browser origins allowed to call the api, comma separated; empty: none; `*`: any.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A create's (and every other JSON) body; a batch's has its own, larger limit: BATCH_MAX_ITEMS
    # items of the longest prompt, with room for their options.
    create_max_body_bytes: int = Field(default=64 * KIB, ge=1)
    batch_max_body_bytes: int = Field(default=8 * MIB, ge=1)

    # Callers' keys, comma separated; each key is one key holder. Empty: the api runs open.
    secret_key: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    # The operator's key for /api/admin/*; empty disables the admin API.
    admin_key: str = Field(default="", repr=False)

    # Upstream accounts: ACCESS_TOKEN is the seed's single account, LUMA_ACCOUNTS a JSON list.
    access_token: str = Field(default="", repr=False)
    luma_accounts: list[AccountConfig] = Field(default_factory=list)
    luma_base_url: HttpUrl = LUMA_WEB_API
    # Base URL of official accounts that do not set `base_url`.
    luma_official_base_url: HttpUrl = LUMA_OFFICIAL_API
    default_max_concurrency: int = Field(default=3, ge=1)

    # Polling: an account's generation list is read at most every poll_min_interval and at
    # least every poll_interval; in between, a poll is due when a generation is expected to end.
    poll_interval_seconds: float = Field(default=3.0, gt=0)
    poll_min_interval_seconds: float = Field(default=0.5, gt=0)
    poll_list_limit: int = Field(default=50, ge=1, le=100)
    usage_refresh_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=20.0, gt=0)
    # A lease outlives its holder by this long; holders renew it well before.
    lease_ttl_seconds: float = Field(default=60.0, gt=0)
    # Once an intent to create is written the slot stays taken until the create is reconciled.
    intent_lease_seconds: float = Field(default=600.0, gt=0)
    dispatch_idle_seconds: float = Field(default=1.0, gt=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)

    upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    # A create is bounded more tightly than reads: how long one may still land upstream after
    # its worker died is what a reconcile waits for before it may create again.
    upstream_create_timeout_seconds: float = Field(default=10.0, gt=0)
    upstream_retry_attempts: int = Field(default=5, ge=1)
    upstream_retry_base_seconds: float = Field(default=0.5, ge=0)
    upstream_retry_max_seconds: float = Field(default=20.0, ge=0)
    upstream_retry_budget_seconds: float = Field(default=60.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=30.0, gt=0)

    # Deadlines after which a generation fails with an explicit reason instead of waiting forever.
    upstream_pending_deadline_seconds: float = Field(default=3600.0, gt=0)
    upstream_silence_deadline_seconds: float = Field(default=900.0, gt=0)
    missing_video_deadline_seconds: float = Field(default=300.0, gt=0)
    submit_job_timeout_seconds: float = Field(default=120.0, gt=0)

    upload_max_bytes: int = Field(default=10 * MIB, ge=1)
    upload_timeout_seconds: float = Field(default=60.0, gt=0)
    # Bytes of uploads waiting in Redis for a worker, across every api; past it 429 uploads_busy.
    upload_max_inflight_bytes: int = Field(default=100 * MIB, ge=1)
    # Width x height of an uploaded image, so a small file cannot decode to gigabytes.
    upload_max_pixels: int = Field(default=40_000_000, ge=1)

    max_queue_depth: int = Field(default=10_000, ge=1)
    # Per key holder: generations it may have waiting (unset: a quarter of MAX_QUEUE_DEPTH when
    # there are several keys, all of it for a single one), and creates a minute (0: no limit).
    # The admin API overrides both per holder.
    holder_max_queued: int | None = Field(default=None, ge=1)
    holder_creates_per_minute: int = Field(default=0, ge=0)
    batch_max_items: int = Field(default=1000, ge=1, le=10_000)
    # How long an Idempotency-Key is remembered, per key holder.
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)
    list_max_limit: int = Field(default=100, ge=1)
    record_retention_days: float = Field(default=30.0, gt=0)
    # Each api process keeps this many finished (completed or failed) records in memory, for
    # this long: they never change again, so their detail needs no Redis read. 0 turns it off.
    finished_cache_entries: int = Field(default=10_000, ge=0)
    finished_cache_seconds: float = Field(default=60.0, gt=0)
    # The event log (shared/events.py): every transition, kept to about this many entries; the
    # default holds a week at 1,000 generations an hour (about six transitions each).
    event_log_max_len: int = Field(default=1_000_000, ge=1000)
    # Each key holder's own event stream: how far back a live stream can resume (Last-Event-ID).
    holder_events_max_len: int = Field(default=10_000, ge=100)
    # A comment on every idle live stream this often, so proxies do not close it.
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Until a generation time has been measured, estimates assume this.
    default_generation_seconds: float = Field(default=120.0, gt=0)

    # Webhooks (worker/webhooks.py): how long a receiver may take, the seconds between attempts
    # (the Standard Webhooks schedule: about 27 hours in all), and whether a callback_url may
    # point into private networks (development and tests only: see shared/netguard.py).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_allow_private_networks: bool = False

    # The official API (shared/pricing.py): what each create costs, in cents, over Luma's list
    # prices ({"ray-2:720p:5s": 71, "ray-1-6": 35, ...}), and the options a create that names none
    # of them gets.
    official_prices: dict[str, int] = Field(default_factory=dict)
    official_default_model: Model = DEFAULT_MODEL
    official_default_resolution: Resolution = DEFAULT_RESOLUTION
    official_default_duration: Duration = DEFAULT_DURATION
    # Where Luma (and callers) reach this gateway, e.g. https://gw.example.com: official creates
    # then carry a callback_url under it, and stored files are served under it (/files/<id>).
    public_base_url: str = ""
    # While an official account's callbacks arrive, its generations are polled only this often.
    callback_poll_interval_seconds: float = Field(default=30.0, gt=0)
    # Images the gateway keeps itself (uploads when no web account can take them, external
    # images for official accounts): a directory, or an S3-compatible bucket when FILES_S3_BUCKET
    # is set (FILES_S3_ENDPOINT, FILES_S3_REGION, FILES_S3_ACCESS_KEY, FILES_S3_SECRET_KEY).
    files_dir: str = "./data/files"
    files_s3_endpoint: str = ""
    files_s3_bucket: str = ""
    files_s3_region: str = "us-east-1"
    files_s3_access_key: str = Field(default="", repr=False)
    files_s3_secret_key: str = Field(default="", repr=False)
    # External images (a create's http(s) image that is not on Luma's CDN) are fetched by a
    # worker; these URL prefixes are Luma's own and are passed through as they are.
    luma_cdn_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://storage.cdn-luma.com/"]
    )
    image_fetch_timeout_seconds: float = Field(default=20.0, gt=0)
    # Development and tests only: let image fetches reach loopback and private addresses.
    allow_private_networks: bool = False
    # After a web generation completes, fetch its watermark-free link once (video.download_url).
    fetch_download_url: bool = True

    worker_max_jobs: int = Field(default=50, ge=1)
    # A worker's liveness key lives 3 heartbeats; once it lapses another worker takes its jobs over.
    worker_heartbeat_seconds: float = Field(default=2.0, gt=0)
    # A waiting generation fails `no_account` once no account could take work for this long.
    no_account_deadline_seconds: float = Field(default=3600.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # Prometheus (README, "Operating it"): METRICS_KEY, when set, is the Bearer token the api's
    # /metrics asks for; each worker serves its own metrics on WORKER_METRICS_PORT (unset: off).
    metrics_key: str = Field(default="", repr=False)
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON when stdout is not a terminal

    # Test-only: the name of a point in the submit path where the worker kills itself (SIGKILL),
    # so fault-injection tests can reproduce a crash at exactly that point.
    fault_point: str = ""

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(step) for step in value.split(",") if step.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_is_positive(cls, value: list[float]) -> list[float]:
        if any(step < 0 for step in value):
            raise ValueError("every step of the schedule is a number of seconds, 0 or more")
        return value

    @field_validator("luma_cdn_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            return [prefix.strip() for prefix in value.split(",") if prefix.strip()]
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_a_scheme(cls, value: str) -> str:
        # redis-py only says so at the first connect, from deep in a traceback.
        if not value.startswith(REDIS_URL_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss:// (TLS) or unix://, "
                "e.g. redis://127.0.0.1:6379/0 or redis://:PASSWORD@HOST:6379/0"
            )
        return value

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("secret_key", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        addresses = []
        for entry in (part.strip() for part in value.split(",")):
            if not entry:
                continue
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{entry!r} is not host:port")
            addresses.append((host.strip("[]"), int(port)))
        return addresses

    @model_validator(mode="after")
    def _blocking_calls_end_within_the_socket_timeout(self) -> Settings:
        # The dispatcher's BLPOP, the event log's readers (XREAD) and the create's WAIT block on Redis
        # for their own timeout; were that as long as the socket timeout, their normal end would
        # be cut off as a Redis timeout.
        blocking = [
            ("DISPATCH_IDLE_SECONDS", self.dispatch_idle_seconds),
            ("a read of the event log (XREAD BLOCK)", EVENT_LOG_BLOCK_SECONDS),
        ]
        if self.redis_min_replicas_acked:
            blocking.append(("REDIS_REPLICA_ACK_TIMEOUT_SECONDS", self.redis_replica_ack_timeout_seconds))
        for name, seconds in blocking:
            if seconds + BLOCKING_CALL_MARGIN_SECONDS > self.redis_socket_timeout_seconds:
                raise ValueError(
                    f"{name} ({seconds:g}) must be at least {BLOCKING_CALL_MARGIN_SECONDS:g} s below "
                    f"REDIS_SOCKET_TIMEOUT_SECONDS ({self.redis_socket_timeout_seconds:g}): "
                    "a call blocks on Redis that long"
                )
        return self

    @field_validator("access_token")
    @classmethod
    def _token_is_a_cookie_line(cls, value: str) -> str:
        return _cookie_line(value) if value.strip() else ""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [origin.strip() for origin in value.split(",") if origin.strip()]
        if isinstance(value, list):
            return [_origin(origin) if isinstance(origin, str) else origin for origin in value]
        return value

    @model_validator(mode="after")
    def _one_upload_fits_in_flight(self) -> Self:
        if self.upload_max_inflight_bytes < self.upload_max_bytes:
            raise ValueError(
                "UPLOAD_MAX_INFLIGHT_BYTES must be at least UPLOAD_MAX_BYTES, or no upload could be taken"
            )
        return self

    def accounts(self) -> list[AccountConfig]:
        """Every configured account, ACCESS_TOKEN first as the seed's `default` account."""
        configured: list[AccountConfig] = []
        if self.access_token:
            configured.append(
                AccountConfig(
                    name="default",
                    cookie=self.access_token,
                    max_concurrency=self.default_max_concurrency,
                )
            )
        configured.extend(self.luma_accounts)
        return [self.with_defaults(account) for account in configured]

    def with_defaults(self, account: AccountConfig) -> AccountConfig:
        """The account with its kind's base URL filled in and its cookie normalized."""
        default_base = self.luma_base_url if account.kind == "web" else self.luma_official_base_url
        return account.model_copy(
            update={
                "cookie": normalize_cookie(account.cookie) if account.cookie else None,
                "base_url": (account.base_url or default_base).rstrip("/"),
            }
        )

    def price_table(self) -> dict[str, int]:
        """Luma's list prices with the operator's OFFICIAL_PRICES over them."""
        return {**LIST_PRICES_CENTS, **self.official_prices}

    def official_price(self, model: str | None, resolution: str | None, duration: str | None) -> int:
        """What an official create with these options (the defaults filling in) costs, in cents."""
        return price_cents(
            self.price_table(),
            model or self.official_default_model,
            resolution or self.official_default_resolution,
            duration or self.official_default_duration,
        )

    @property
    def record_retention_seconds(self) -> int:
        return int(self.record_retention_days * 86400)
