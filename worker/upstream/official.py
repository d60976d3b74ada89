"""The official Dream Machine API (UPSTREAM.md §2): its client, and the provider that adapts it.

`OfficialClient` speaks for one API key (`Authorization: Bearer`): the only code that knows this
API's URLs and error bodies. Every failure surfaces as one of worker/upstream/errors.py's
exceptions. `OfficialProvider` turns its generation objects (`queued`/`dreaming`/`completed`/
`failed`, `assets.video`, `failure_reason`) into the worker's typed results.

A create goes to `POST /generations/video`; an API that answers it 404 (an older one) gets
`POST /generations`, and the account remembers which one it takes.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from yarl import URL

from shared.models import GenerationRecord
from shared.pricing import DEFAULT_DURATION, DEFAULT_MODEL, DEFAULT_RESOLUTION, FIXED_OUTPUT_MODELS
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
from worker.upstream.retry import DEFAULT_RETRY, NOT_SENT, RetryPolicy
from worker.upstream.web import BODY_EXCERPT_CHARS, CONNECT_TIMEOUT, _describe, _iso_time, error_message

logger = structlog.get_logger(__name__)

Json = dict[str, Any]

VIDEO_ROUTE = "/generations/video"
LEGACY_ROUTE = "/generations"
# What an official generation object says -> our vocabulary; unknown states count as live.
_STATES: dict[str, UpstreamState] = {
    "queued": "pending",
    "dreaming": "processing",
    "completed": "completed",
    "failed": "failed",
}
# Shown in place of our callback URL wherever the upstream echoes the request back: its token
# would let anyone who reads the generation trigger refreshes.
REDACTED = "(redacted)"


@dataclass(frozen=True)
class OfficialDefaults:
    """The options a create gets when it names none (settings OFFICIAL_DEFAULT_*)."""

    model: str = DEFAULT_MODEL
    resolution: str = DEFAULT_RESOLUTION
    duration: str = DEFAULT_DURATION


def _error_class(status: int, message: str, *, not_found: type[UpstreamRejected]) -> type[LumaError]:
    text = message.lower()
    spent = status in (400, 403) and ("credit" in text or "insufficient" in text)
    return error_class_for(status, spent=spent, not_found=not_found)


class OfficialClient:
    """One API key's calls; idempotent ones are retried per `retry`, a create only if never sent."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        account: str,
        timeout: float = 30.0,
        create_timeout: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        create_route: str = "",
        on_create_route: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.account = account
        self.timeout = timeout
        self.create_timeout = create_timeout if create_timeout is not None else timeout
        self.retry = retry
        self.create_route = create_route if create_route in (VIDEO_ROUTE, LEGACY_ROUTE) else VIDEO_ROUTE
        self.on_create_route = on_create_route
        self._log = logger.bind(account=account)

    def __repr__(self) -> str:  # never the key: this can end up in tracebacks and logs
        return f"OfficialClient(account={self.account!r}, base_url={self.base_url!r})"

    async def create(self, body: Mapping[str, Any]) -> Json:
        """POST the generation; an API without the video route (404) gets the older one, once."""
        try:
            return await self._create_on(self.create_route, body)
        except GenerationNotFound:
            if self.create_route != VIDEO_ROUTE:
                raise
        # A 404 is the router's answer, given before anything was made: the older route is the
        # first create, not a second one.
        generation = await self._create_on(LEGACY_ROUTE, body)
        self.create_route = LEGACY_ROUTE
        if self.on_create_route is not None:
            await self.on_create_route(LEGACY_ROUTE)
        return generation

    async def _create_on(self, route: str, body: Mapping[str, Any]) -> Json:
        return await self.retry.run(
            "create",
            lambda: self._request(
                "POST",
                route,
                json_body=dict(body),
                answer_within=self.create_timeout,
                not_found=GenerationNotFound,
            ),
            retry_on=NOT_SENT,
            log=self._log,
        )

    async def get(self, upstream_id: str) -> Json:
        path = f"{LEGACY_ROUTE}/{_path_id(upstream_id)}"
        return await self.retry.run(
            "get", lambda: self._request("GET", path, not_found=GenerationNotFound), log=self._log
        )

    async def list(self, offset: int = 0, limit: int = 10) -> builtins.list[Json]:
        params = {"offset": str(offset), "limit": str(limit)}
        data = await self.retry.run(
            "list", lambda: self._request("GET", LEGACY_ROUTE, params=params), log=self._log
        )
        items = data.get("generations")
        if not isinstance(items, builtins.list):
            raise MalformedResponse("200 from GET /generations: no `generations` list", status=200)
        return [item for item in items if isinstance(item, dict)]

    async def credits(self) -> Json:
        """`{credit_balance}` in US cents, as received."""
        data = await self.retry.run("credits", lambda: self._request("GET", "/credits"), log=self._log)
        if not isinstance(data.get("credit_balance"), int | float):
            raise MalformedResponse("200 from GET /credits: no numeric `credit_balance`", status=200)
        return data

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Json | None = None,
        answer_within: float | None = None,
        not_found: type[UpstreamRejected] = UpstreamRejected,
    ) -> Json:
        """One request; the JSON object of a 2xx answer, or a LumaError."""
        total = self.timeout if answer_within is None else answer_within
        with observed(method, path, self.account) as attempt:
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=json_body,
                    headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=total, sock_connect=min(total, CONNECT_TIMEOUT)),
                    allow_redirects=False,  # a redirect would carry the key wherever it points
                ) as response:
                    status, retry_after = response.status, response.headers.get("Retry-After")
                    text = (await response.read()).decode("utf-8", errors="replace")
                    attempt.status = str(status)  # only once the whole answer is in
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # `from None`: aiohttp's frames hold our headers; a renderer of locals would print the key.
                raise RequestNotSent(f"{method} {path}: not sent: {_describe(exc)}") from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise UpstreamUnavailable(f"{method} {path}: {_describe(exc)}") from None
        if 200 <= status < 300:
            try:
                data: object = json.loads(text)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                excerpt = self._scrub(text)[:BODY_EXCERPT_CHARS]
                self._log.warning("luma.malformed_response", method=method, path=path, status=status)
                raise MalformedResponse(
                    f"malformed {status} from {method} {path}", status=status, body=excerpt
                )
            return data
        try:
            parsed: object = json.loads(text)
        except ValueError:
            parsed = text.strip()
        detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
        message = self._scrub(error_message(detail))[:200] or "(no detail)"
        cls = _error_class(status, message, not_found=not_found)
        error = cls(
            f"{status} from {method} {path}: {message}",
            status=status,
            detail=message,
            body=self._scrub(text)[:BODY_EXCERPT_CHARS],
        )
        if isinstance(error, RateLimited):
            error.retry_after = parse_retry_after(retry_after)
        raise error

    def _scrub(self, text: str) -> str:
        """An upstream may echo what it got: never let the key through."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _path_id(upstream_id: str) -> str:
    if not upstream_id or any(char in upstream_id for char in "/?#%") or upstream_id in (".", ".."):
        raise ValueError(f"not a generation id: {upstream_id!r}")
    return upstream_id


class OfficialProvider:
    """`Provider` for accounts of kind `official`: a Dream Machine API key."""

    def __init__(self, client: OfficialClient, defaults: OfficialDefaults | None = None) -> None:
        self.client = client
        self.account = client.account
        self.defaults = defaults or OfficialDefaults()

    async def create(
        self, record: GenerationRecord, *, callback_url: str | None = None
    ) -> UpstreamGeneration:
        return generation_from_official(
            await self.client.create(create_body(record, self.defaults, callback_url))
        )

    async def get(self, upstream_id: str) -> UpstreamGeneration:
        return generation_from_official(await self.client.get(upstream_id))

    async def list_recent(self, offset: int, limit: int) -> builtins.list[UpstreamGeneration]:
        items = await self.client.list(offset=offset, limit=limit)
        return [generation_from_official(item) for item in items if isinstance(item.get("id"), str)]

    async def usage(self) -> UpstreamUsage:
        raw = await self.client.credits()
        return UpstreamUsage(available=int(raw["credit_balance"]), capacity=None, consumed=None, raw=raw)

    async def keep_alive(self) -> None:
        """An API key has no session to keep alive."""

    async def upload(self, data: bytes, content_type: str, filename: str) -> UploadSlot:
        raise UpstreamRejected("the official API has no upload: images must be public URLs")

    async def download_url(self, upstream_id: str) -> str | None:
        """The official API's video asset carries no watermark: there is no other link."""
        return None


def create_body(
    record: GenerationRecord, defaults: OfficialDefaults, callback_url: str | None = None
) -> Json:
    """The official create body for a generation: its options, keyframes for images or extend."""
    model = record.model or defaults.model
    body: Json = {"prompt": record.prompt, "aspect_ratio": record.aspect_ratio, "model": model}
    if model not in FIXED_OUTPUT_MODELS:
        body["resolution"] = record.resolution or defaults.resolution
        body["duration"] = record.duration or defaults.duration
    if record.loop is not None:
        body["loop"] = record.loop
    keyframes: Json = {}
    if record.extend_upstream_id:
        keyframes["frame0"] = {"type": "generation", "id": record.extend_upstream_id}
    image = record.upstream_image or record.image
    if image and "frame0" not in keyframes:
        keyframes["frame0"] = {"type": "image", "url": image}
    image_end = record.upstream_image_end or record.image_end
    if image_end:
        keyframes["frame1"] = {"type": "image", "url": image_end}
    if keyframes:
        body["keyframes"] = keyframes
    if callback_url:
        body["callback_url"] = callback_url
    return body


def generation_from_official(raw: Json) -> UpstreamGeneration:
    """An official generation object, normalized; our callback URL is redacted from its request."""
    request = raw.get("request")
    if isinstance(request, dict) and request.get("callback_url"):
        raw = {**raw, "request": {**request, "callback_url": REDACTED}}
        request = raw["request"]
    assets = raw.get("assets")
    video = assets.get("video") if isinstance(assets, dict) else None
    prompt = request.get("prompt") if isinstance(request, dict) else None
    state = _STATES.get(str(raw.get("state")), "processing")
    reason = raw.get("failure_reason")
    return UpstreamGeneration(
        id=str(raw["id"]),
        prompt=prompt if isinstance(prompt, str) else None,
        state=state,
        created_ts=_iso_time(raw.get("created_at")),
        video_url=video if isinstance(video, str) and video else None,
        failure_message=(
            reason if isinstance(reason, str) and reason else "the upstream reported the generation as failed"
        )
        if state == "failed"
        else None,
        raw=raw,
    )
