"""The upstream client for the Luma web API ("photon v1"): the only code that knows upstream URLs.

One `LumaClient` speaks for one account (one logged-in browser session, see UPSTREAM.md §1). Every
upstream failure surfaces as one of the exceptions below, so the worker decides per class what to do
with a generation and an account; nothing here knows about Redis, leases or records.

    LumaError                      base: .status, .detail, .body (a short excerpt, never the cookie)
    ├── UpstreamUnavailable        transient: 5xx, timeouts, resets; retried for idempotent calls
    │   ├── RequestNotSent         the request provably never reached the server: a create may be retried
    │   └── MalformedResponse      a 2xx whose body is not the JSON we expect (a create may have billed)
    ├── AccountExpired             401: the cookie is dead until an operator replaces it
    ├── UsageExhausted             the account's monthly capacity is spent
    ├── RateLimited                429: .retry_after seconds, when the server said
    └── UpstreamRejected           any other 4xx: this request will never succeed as sent
        └── GenerationNotFound     404 on a generation
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from shared.cookies import http_date, merge_set_cookie, normalize_cookie, parse_cookie

__all__ = [
    "AccountExpired",
    "GenerationNotFound",
    "LumaClient",
    "LumaError",
    "MalformedResponse",
    "RateLimited",
    "RequestNotSent",
    "RetryPolicy",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "UsageExhausted",
    "create_session",
    "error_message",
    "parse_retry_after",
]

logger = structlog.get_logger(__name__)

Json = dict[str, Any]
T = TypeVar("T")

ORIGIN = "https://lumalabs.ai"
REFERER = "https://lumalabs.ai/"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
BODY_EXCERPT_CHARS = 500
# Bounded separately from the total timeout so that a connect timeout can be told apart from a
# read timeout: only the former proves the request never left.
CONNECT_TIMEOUT = 10.0

_GENERATIONS = "/api/photon/v1/generations"
_ID_RE = re.compile(r"[A-Za-z0-9._~-]+")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class LumaError(Exception):
    """Any failure talking to the upstream."""

    def __init__(
        self, message: str, *, status: int | None = None, detail: object = None, body: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail
        self.body = body


class UpstreamUnavailable(LumaError):
    """Transient: 5xx, a timeout, a reset connection, or an unreadable 2xx body."""


class RequestNotSent(UpstreamUnavailable):
    """The request never reached the server (refused, DNS, connect timeout): safe to send again."""


class MalformedResponse(UpstreamUnavailable):
    """A 2xx whose body is not the JSON this call expects; treated as a transient fault."""


class AccountExpired(LumaError):
    """401: the account's token is expired or invalid until an operator gives it a new cookie."""


class UsageExhausted(LumaError):
    """The account's monthly capacity is spent ("Maximum usage limit exceeded", 402, ...)."""


class RateLimited(LumaError):
    """429: the account is saturated; `retry_after` is the server's hint in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: object = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail, body=body)
        self.retry_after = retry_after


class UpstreamRejected(LumaError):
    """Any other 4xx: the request itself is wrong (validation, unknown route, forbidden)."""


class GenerationNotFound(UpstreamRejected):
    """404 on a generation id: the account does not have it."""


def error_message(detail: object) -> str:
    """Render a FastAPI `detail` (a string, `{"reason": ...}` or a validation list) as one line."""
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Mapping):
        for key in ("reason", "message", "msg", "error", "detail"):
            value = detail.get(key)
            if value is not None:
                return error_message(value)
        return json.dumps(detail, default=str)
    if isinstance(detail, builtins.list):
        return "; ".join(_validation_item(item) for item in detail)
    return str(detail)


def _validation_item(item: object) -> str:
    if isinstance(item, Mapping) and "msg" in item:
        loc = item.get("loc")
        where = ".".join(str(part) for part in loc) if isinstance(loc, builtins.list) else ""
        return f"{where}: {item['msg']}" if where else str(item["msg"])
    return error_message(item)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = http_date(value)
        if when is None:
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def _error_detail(text: str) -> object:
    """The FastAPI `detail` of an error body (or its `message`/`error`), else the body itself."""
    try:
        data: object = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, Mapping):
        for key in ("detail", "message", "error"):
            if key in data:
                return data[key]
    return data


def _error_class(status: int, message: str, *, not_found: type[UpstreamRejected]) -> type[LumaError]:
    text = message.lower()
    if status == 401:
        return AccountExpired
    if status == 402 or "maximum usage limit" in text:
        return UsageExhausted
    if status == 429:
        return RateLimited
    if status in (400, 403) and ("limit" in text or "exceeded" in text):
        return UsageExhausted
    if status == 404:
        return not_found
    if 400 <= status < 500:
        return UpstreamRejected
    # 5xx, and anything else unexpected (an unfollowed 3xx): transient as far as we can tell.
    return UpstreamUnavailable


def _storage_error_class(status: int) -> type[LumaError]:
    # A storage URL knows nothing of accounts: its 401/403 mean a bad or stale signature.
    if status == 429:
        return RateLimited
    if 400 <= status < 500:
        return UpstreamRejected
    return UpstreamUnavailable


# --------------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard an idempotent call tries: exponential backoff with full jitter, within a budget."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    budget_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.budget_seconds < 0:
            raise ValueError("delays and budget must not be negative")

    def backoff(self, failures: int) -> float:
        """A random delay in [0, min(max_delay, base_delay * 2**(failures-1))] ("full jitter")."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(max(failures - 1, 0), 60))
        return random.uniform(0.0, ceiling)

    def delay_after(self, error: LumaError, failures: int) -> float:
        """How long to wait before the next attempt after `error`, the `failures`-th in a row."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.max_delay)
        return self.backoff(failures)


DEFAULT_RETRY = RetryPolicy()
_TRANSIENT: tuple[type[LumaError], ...] = (UpstreamUnavailable, RateLimited)
_NOT_SENT: tuple[type[LumaError], ...] = (RequestNotSent,)


def create_session(*, limit: int = 100) -> aiohttp.ClientSession:
    """A ClientSession fit to share between accounts: no cookie jar, every client sends its own."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=limit)
    )


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


class LumaClient:
    """One Luma account's session on the web API; idempotent calls are retried per `retry`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        cookie: str,
        account: str,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        on_cookie: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        if not isinstance(session.cookie_jar, aiohttp.DummyCookieJar):
            # One session serves every account: a real jar would mix their cookies into each other's
            # requests, and aiohttp rewrites our Cookie header whenever the jar has something to add.
            raise ValueError("LumaClient needs a session created with cookie_jar=aiohttp.DummyCookieJar()")
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.cookie = normalize_cookie(cookie)
        self.account = account
        self.timeout = timeout
        self.retry = retry
        self.on_cookie = on_cookie
        self._saved_cookie = self.cookie
        self._cookie_lock = asyncio.Lock()
        self._log = logger.bind(account=account)

    def __repr__(self) -> str:  # never the cookie: this can end up in tracebacks and logs
        return f"LumaClient(account={self.account!r}, base_url={self.base_url!r})"

    # --- the upstream calls ---------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any]) -> Json:
        """POST a new generation and return it (element 0 of the 201 array).

        Not retried except on RequestNotSent: a create that timed out may have been billed, so
        the caller reconciles against `list()` instead of sending it again.
        """
        path = f"{_GENERATIONS}/"
        data = await self._with_retry(
            "create",
            lambda: self._request("POST", path, _is_generation_array, json_body=dict(body)),
            retry_on=_NOT_SENT,
        )
        generation: Json = data[0]
        return generation

    async def get(self, upstream_id: str) -> Json:
        """One generation, as received."""
        path = f"{_GENERATIONS}/{_path_id(upstream_id)}"
        return await self._with_retry(
            "get", lambda: self._request("GET", path, _is_object, not_found=GenerationNotFound)
        )

    async def list(self, offset: int = 0, limit: int = 10) -> builtins.list[Json]:
        """The account's generations, newest first."""
        path = "/api/photon/v1/user/generations/"
        params = {"offset": str(offset), "limit": str(limit)}
        return await self._with_retry(
            "list", lambda: self._request("GET", path, _is_object_array, params=params)
        )

    async def usage(self) -> Json:
        """`{consumed, capacity, available, subscription, plans}` as received."""
        path = "/api/photon/v1/subscription/usage"
        return await self._with_retry("usage", lambda: self._request("GET", path, _is_object))

    async def me(self) -> Json:
        """The current user; also the keep-alive that makes the upstream rotate the cookie."""
        path = "/api/users/v1/me"
        return await self._with_retry("me", lambda: self._request("GET", path, _is_object))

    async def download_video_url(self, upstream_id: str) -> str:
        """The watermark-free video link of a completed generation."""
        path = f"{_GENERATIONS}/{_path_id(upstream_id)}/download_video_url"
        data = await self._with_retry(
            "download_video_url",
            lambda: self._request("GET", path, _is_download_link, not_found=GenerationNotFound),
        )
        url: str = data["url"]
        return url

    async def sign_upload(self, filename: str = "file.jpg") -> Json:
        """A signed upload slot `{id, presigned_url, public_url}` under this account's user.

        Retried like a read: an unused signature costs nothing.
        """
        path = f"{_GENERATIONS}/file_upload"
        params = {"file_type": "image", "filename": filename}
        return await self._with_retry(
            "sign_upload", lambda: self._request("POST", path, _is_upload_slot, params=params)
        )

    async def put_upload(self, presigned_url: str, data: bytes, content_type: str) -> None:
        """PUT the bytes to a presigned storage URL, without the account's cookie or browser headers."""
        await self._with_retry("put_upload", lambda: self._put_storage(presigned_url, data, content_type))

    # --- one attempt ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Cookie": self.cookie,
            "Origin": ORIGIN,
            "Referer": REFERER,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, CONNECT_TIMEOUT))

    async def _request(
        self,
        method: str,
        path: str,
        shape: Callable[[object], TypeGuard[T]],
        *,
        params: Mapping[str, str] | None = None,
        json_body: Json | None = None,
        not_found: type[UpstreamRejected] = UpstreamRejected,
    ) -> T:
        """Send one request; return the JSON of a 2xx answer if it has `shape`, else raise a LumaError."""
        rotated = False
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                params=params,
                json=json_body,
                headers=self._headers(),  # built inline: no local variable holds the cookie
                timeout=self._client_timeout(),
                allow_redirects=False,  # a redirect would carry the cookie wherever it points
            ) as response:
                # Errors rotate cookies too, so merge before anything can fail.
                rotated = self._absorb_set_cookie(response.headers.getall("Set-Cookie", []))
                status = response.status
                retry_after = response.headers.get("Retry-After")
                raw = await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # `from None` here and below: aiohttp's frames hold our headers, and a traceback
            # renderer that shows locals would print the cookie.
            raise RequestNotSent(f"{method} {path}: not sent: {_describe(exc)}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamUnavailable(f"{method} {path}: {_describe(exc)}") from None
        finally:
            if rotated:
                await self._save_cookie()

        text = raw.decode("utf-8", errors="replace")
        if 200 <= status < 300:
            try:
                data: object = json.loads(text)
            except ValueError:
                raise self._malformed(method, path, status, text, "body is not JSON") from None
            if not shape(data):
                expected = shape.__name__.removeprefix("_is_").replace("_", " ")
                raise self._malformed(method, path, status, text, f"expected {expected}")
            return data
        detail = _error_detail(text)
        message = error_message(detail)
        error = self._error(
            _error_class(status, message, not_found=not_found), method, path, status, detail, text
        )
        if isinstance(error, RateLimited):
            error.retry_after = parse_retry_after(retry_after)
        raise error

    async def _put_storage(self, presigned_url: str, data: bytes, content_type: str) -> None:
        where = _redact_url(presigned_url)  # the query string is a credential
        try:
            async with self.session.put(
                presigned_url,
                data=data,
                headers={"Content-Type": content_type},
                timeout=self._client_timeout(),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise RequestNotSent(f"PUT {where}: not sent: {_describe(exc)}") from None
        except aiohttp.InvalidURL:
            raise UpstreamRejected(f"PUT {where}: invalid presigned URL") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamUnavailable(f"PUT {where}: {_describe(exc)}") from None
        if 200 <= status < 300:
            return
        text = raw.decode("utf-8", errors="replace")
        detail = _error_detail(text)
        error = self._error(_storage_error_class(status), "PUT", where, status, detail, text)
        if isinstance(error, RateLimited):
            error.retry_after = parse_retry_after(retry_after)
        raise error

    # --- retries --------------------------------------------------------------------------------

    async def _with_retry(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        retry_on: tuple[type[LumaError], ...] = _TRANSIENT,
    ) -> T:
        policy = self.retry
        deadline = time.monotonic() + policy.budget_seconds
        failures = 0
        while True:
            try:
                return await attempt()
            except retry_on as exc:
                failures += 1
                if failures >= policy.attempts:
                    raise
                delay = policy.delay_after(exc, failures)
                if time.monotonic() + delay > deadline:
                    raise
                self._log.warning(
                    "luma.retry",
                    operation=operation,
                    attempt=failures,
                    delay=round(delay, 3),
                    error=type(exc).__name__,
                    status=exc.status,
                    message=exc.message,
                )
                await asyncio.sleep(delay)

    # --- cookies --------------------------------------------------------------------------------

    def _absorb_set_cookie(self, headers: builtins.list[str]) -> bool:
        """Merge a response's Set-Cookie headers into `self.cookie`; True if it changed."""
        if not headers:
            return False
        merged = merge_set_cookie(self.cookie, headers)
        if merged == self.cookie or not merged:
            # Never send an empty Cookie: an upstream that clears everything is treated as a no-op
            # here and will answer 401 soon enough.
            return False
        before = dict(parse_cookie(self.cookie))
        after = dict(parse_cookie(merged))
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        self.cookie = merged
        self._log.debug("luma.cookie_rotated", names=changed)
        return True

    async def _save_cookie(self) -> None:
        # Serialized, and always the latest value: two responses rotating at once must not let the
        # older cookie be the last one stored.
        if self.on_cookie is None:
            return
        async with self._cookie_lock:
            cookie = self.cookie
            if cookie == self._saved_cookie:
                return
            try:
                await self.on_cookie(cookie)
            except Exception as exc:
                # The upstream answer matters more (a create's id must reach the caller); the cookie
                # stays current in memory and the next rotation tries to store it again.
                self._log.error("luma.cookie_store_failed", error=type(exc).__name__)
                return
            self._saved_cookie = cookie

    # --- helpers --------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """`text` with any of our cookie values blanked out (an upstream may echo what it got)."""
        for _, value in parse_cookie(self.cookie):
            if len(value) >= 8:  # short values (flags, "1") would blank out innocent text
                text = text.replace(value, "***")
        return text

    def _scrub_detail(self, detail: object) -> object:
        if isinstance(detail, str):
            return self._scrub(detail)
        if isinstance(detail, builtins.list):
            return [self._scrub_detail(item) for item in detail]
        if isinstance(detail, dict):
            return {key: self._scrub_detail(value) for key, value in detail.items()}
        return detail

    def _excerpt(self, text: str) -> str:
        return self._scrub(text)[:BODY_EXCERPT_CHARS]

    def _error(
        self, cls: type[LumaError], method: str, path: str, status: int, detail: object, text: str
    ) -> LumaError:
        message = self._scrub(error_message(detail))[:200] or "(no detail)"
        return cls(
            f"{status} from {method} {path}: {message}",
            status=status,
            detail=self._scrub_detail(detail),
            body=self._excerpt(text),
        )

    def _malformed(self, method: str, path: str, status: int, text: str, why: str) -> MalformedResponse:
        excerpt = self._excerpt(text)
        self._log.warning(
            "luma.malformed_response", method=method, path=path, status=status, why=why, body=excerpt
        )
        return MalformedResponse(
            f"malformed {status} from {method} {path}: {why}", status=status, detail=why, body=excerpt
        )


def _is_object(data: object) -> TypeGuard[Json]:
    return isinstance(data, dict)


def _is_object_array(data: object) -> TypeGuard[builtins.list[Json]]:
    return isinstance(data, builtins.list) and all(isinstance(item, dict) for item in data)


def _is_generation_array(data: object) -> TypeGuard[builtins.list[Json]]:
    return isinstance(data, builtins.list) and bool(data) and isinstance(data[0], dict)


def _is_download_link(data: object) -> TypeGuard[Json]:
    return isinstance(data, dict) and isinstance(data.get("url"), str)


def _is_upload_slot(data: object) -> TypeGuard[Json]:
    return isinstance(data, dict) and all(
        isinstance(data.get(key), str) for key in ("presigned_url", "public_url")
    )


def _path_id(upstream_id: str) -> str:
    if not _ID_RE.fullmatch(upstream_id) or upstream_id in (".", ".."):
        raise ValueError(f"not a generation id: {upstream_id!r}")
    return quote(upstream_id, safe="")


def _redact_url(url: str) -> str:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<invalid url>"
    return str(parsed.with_query(None).with_fragment(None))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
