"""The Luma web API ("photon v1"): its client, and the provider that adapts it to the worker.

`LumaClient` speaks for one account (one logged-in browser session, see UPSTREAM.md §1): the only
code that knows this API's URLs, headers, cookies and error bodies. Every failure surfaces as one
of worker/upstream/errors.py's exceptions. `WebProvider` turns the client's JSON into the typed
results of worker/upstream/models.py, which is all the rest of the worker sees.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeGuard, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from shared.cookies import merge_set_cookie, normalize_cookie, parse_cookie
from shared.models import GenerationRecord
from worker.upstream.errors import (
    GenerationNotFound,
    LumaError,
    MalformedResponse,
    RateLimited,
    RequestNotSent,
    UpstreamRejected,
    UpstreamUnavailable,
    error_class_for,
    parse_retry_after,
)
from worker.upstream.metrics import observed
from worker.upstream.models import UploadSlot, UpstreamGeneration, UpstreamState, UpstreamUsage
from worker.upstream.retry import DEFAULT_RETRY, NOT_SENT, TRANSIENT, RetryPolicy

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
# Errors: how this API says what went wrong
# --------------------------------------------------------------------------------------------------


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
    # "maximum usage limit" is how the web API words a spent account, on any status; a 400/403
    # that speaks of a limit being exceeded is one too.
    limit_exceeded = status in (400, 403) and ("limit" in text or "exceeded" in text)
    spent = "maximum usage limit" in text or limit_exceeded
    return error_class_for(status, spent=spent, not_found=not_found)


def _storage_error_class(status: int) -> type[LumaError]:
    # A storage URL knows nothing of accounts: its 401/402/403 mean a bad or stale signature.
    if status == 429:
        return RateLimited
    if 400 <= status < 500:
        return UpstreamRejected
    return UpstreamUnavailable


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
        create_timeout: float | None = None,
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
        # A create's answer is awaited for less long: see UPSTREAM_CREATE_TIMEOUT_SECONDS.
        self.create_timeout = create_timeout if create_timeout is not None else timeout
        self.retry = retry
        self.on_cookie = on_cookie
        self._saved_cookie = self.cookie
        self._cookie_lock = asyncio.Lock()
        self._log = logger.bind(account=account)

    def __repr__(self) -> str:  # never the cookie: this can end up in tracebacks and logs
        return f"LumaClient(account={self.account!r}, base_url={self.base_url!r})"

    # --- the upstream calls ---------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any], *, extend_of: str | None = None) -> Json:
        """POST a new generation (or an extend of `extend_of`) and return it (element 0 of the 201 array).

        Not retried except on RequestNotSent: a create that timed out may have been billed, so
        the caller reconciles against `list()` instead of sending it again.
        """
        path = f"{_GENERATIONS}/{_path_id(extend_of)}/extend" if extend_of else f"{_GENERATIONS}/"
        data = await self._retried(
            "create",
            lambda: self._request(
                "POST", path, _is_generation_array, json_body=dict(body), answer_within=self.create_timeout
            ),
            retry_on=NOT_SENT,
        )
        generation: Json = data[0]
        return generation

    async def get(self, upstream_id: str) -> Json:
        """One generation, as received."""
        path = f"{_GENERATIONS}/{_path_id(upstream_id)}"
        return await self._retried(
            "get", lambda: self._request("GET", path, _is_object, not_found=GenerationNotFound)
        )

    async def list(self, offset: int = 0, limit: int = 10) -> builtins.list[Json]:
        """The account's generations, newest first."""
        path = "/api/photon/v1/user/generations/"
        params = {"offset": str(offset), "limit": str(limit)}
        return await self._retried(
            "list", lambda: self._request("GET", path, _is_object_array, params=params)
        )

    async def usage(self) -> Json:
        """`{consumed, capacity, available, subscription, plans}` as received."""
        path = "/api/photon/v1/subscription/usage"
        return await self._retried("usage", lambda: self._request("GET", path, _is_object))

    async def me(self) -> Json:
        """The current user; also the keep-alive that makes the upstream rotate the cookie."""
        path = "/api/users/v1/me"
        return await self._retried("me", lambda: self._request("GET", path, _is_object))

    async def download_video_url(self, upstream_id: str) -> str:
        """The watermark-free video link of a completed generation."""
        path = f"{_GENERATIONS}/{_path_id(upstream_id)}/download_video_url"
        data = await self._retried(
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
        return await self._retried(
            "sign_upload", lambda: self._request("POST", path, _is_upload_slot, params=params)
        )

    async def put_upload(self, presigned_url: str, data: bytes, content_type: str) -> None:
        """PUT the bytes to a presigned storage URL, without the account's cookie or browser headers."""
        await self._retried("put_upload", lambda: self._put_storage(presigned_url, data, content_type))

    # --- one attempt ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Cookie": self.cookie,
            "Origin": ORIGIN,
            "Referer": REFERER,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def _client_timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        total = self.timeout if total is None else total
        return aiohttp.ClientTimeout(total=total, sock_connect=min(total, CONNECT_TIMEOUT))

    async def _request(
        self,
        method: str,
        path: str,
        shape: Callable[[object], TypeGuard[T]],
        *,
        params: Mapping[str, str] | None = None,
        json_body: Json | None = None,
        not_found: type[UpstreamRejected] = UpstreamRejected,
        answer_within: float | None = None,
    ) -> T:
        """Send one request; return the JSON of a 2xx answer if it has `shape`, else raise a LumaError."""
        rotated = False
        with observed(method, path, self.account) as attempt:
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=json_body,
                    headers=self._headers(),  # built inline: no local variable holds the cookie
                    timeout=self._client_timeout(answer_within),
                    allow_redirects=False,  # a redirect would carry the cookie wherever it points
                ) as response:
                    # Errors rotate cookies too, so merge before anything can fail.
                    rotated = self._absorb_set_cookie(response.headers.getall("Set-Cookie", []))
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    raw = await response.read()
                    attempt.status = str(status)  # only once the whole answer is in
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

    async def _retried(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        retry_on: tuple[type[LumaError], ...] = TRANSIENT,
    ) -> T:
        return await self.retry.run(operation, attempt, retry_on=retry_on, log=self._log)

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


# --------------------------------------------------------------------------------------------------
# The provider: this API's answers as the worker's typed results
# --------------------------------------------------------------------------------------------------


class WebProvider:
    """`Provider` for accounts of kind `web`: a logged-in Luma session behind a cookie."""

    def __init__(self, client: LumaClient) -> None:
        self.client = client
        self.account = client.account

    async def create(
        self, record: GenerationRecord, *, callback_url: str | None = None
    ) -> UpstreamGeneration:
        # The web API has no callbacks: its generations are polled.
        created = await self.client.create(create_body(record), extend_of=record.extend_upstream_id)
        return generation_from_web(created)

    async def get(self, upstream_id: str) -> UpstreamGeneration:
        return generation_from_web(await self.client.get(upstream_id))

    async def list_recent(self, offset: int, limit: int) -> builtins.list[UpstreamGeneration]:
        items = await self.client.list(offset=offset, limit=limit)
        return [generation_from_web(item) for item in items if isinstance(item.get("id"), str)]

    async def usage(self) -> UpstreamUsage:
        raw = await self.client.usage()
        return UpstreamUsage(
            available=_count(raw.get("available")),
            capacity=_count(raw.get("capacity")),
            consumed=_count(raw.get("consumed")),
            raw=raw,
        )

    async def keep_alive(self) -> None:
        await self.client.me()

    async def download_url(self, upstream_id: str) -> str | None:
        return await self.client.download_video_url(upstream_id)

    async def upload(self, data: bytes, content_type: str, filename: str) -> UploadSlot:
        signed = await self.client.sign_upload(filename or "file.jpg")
        await self.client.put_upload(str(signed["presigned_url"]), data, content_type)
        return UploadSlot(
            id=str(signed.get("id") or ""),
            presigned_url=str(signed["presigned_url"]),
            public_url=str(signed["public_url"]),
        )


def create_body(record: GenerationRecord) -> Json:
    """The create body of UPSTREAM.md §1 for a generation."""
    body: Json = {
        "user_prompt": record.prompt,
        "aspect_ratio": record.aspect_ratio,
        "expand_prompt": record.expand_prompt,
    }
    # An external image was put on the account first (worker/images.py): use that copy.
    image, image_end = record.upstream_image or record.image, record.upstream_image_end or record.image_end
    if image:
        body["image_url"] = image
    if image_end:
        body["image_end_url"] = image_end
    if record.loop is not None:
        body["loop"] = record.loop
    return body


_WEB_STATES: dict[str, UpstreamState] = {
    "pending": "pending",
    "processing": "processing",
    "completed": "completed",
    "failed": "failed",
}


def generation_from_web(raw: Json) -> UpstreamGeneration:
    """A web API generation object, normalized; unknown states count as live (`processing`)."""
    video = raw.get("video")
    url = video.get("url") if isinstance(video, dict) else None
    prompt = raw.get("prompt")
    state = _WEB_STATES.get(str(raw.get("state")), "processing")
    return UpstreamGeneration(
        id=str(raw["id"]),
        prompt=prompt if isinstance(prompt, str) else None,
        state=state,
        created_ts=_iso_time(raw.get("created_at")),
        video_url=url if isinstance(url, str) and url else None,
        failure_message=_failure_message(raw) if state == "failed" else None,
        raw=raw,
    )


def _failure_message(raw: Json) -> str:
    # The web API has no fixed field for why a generation failed (UPSTREAM.md §1).
    for field in ("failure_reason", "failure_message", "error", "reason", "detail"):
        value = raw.get(field)
        if isinstance(value, str) and value:
            return value
    return "the upstream reported the generation as failed"


def _iso_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _count(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
