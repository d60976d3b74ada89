"""A client of the gateway's public HTTP API, for the terminal commands (batch, status, download).

It speaks only what any caller on another machine can: /api/generations/... with the Secret-Key
header. The key goes to the gateway and nowhere else: video downloads (a CDN's URLs) are sent
without it, and no message here ever contains it.

Errors, from the caller's point of view:

    GatewayError            anything the command cannot get past; its message is one line
    +-- Unreachable         no answer from the gateway at all (wrong --url, not running)
    +-- Unauthorized        401: the key was refused
    +-- Refused             any other 4xx/5xx answer, with its status, code and message
        +-- Busy            429 (or a 503 with Retry-After): try again after `retry_after`
    DownloadError           a video could not be fetched (its URL answered an error, or cut off)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

KEY_HEADER = "Secret-Key"
IDS_PER_REQUEST = 100  # the gateway's bound on `ids` (and on a list page's limit)
PAGE = 100
# After the gateway answered once, how long a run keeps trying through its restarts or blips.
OUTAGE_SECONDS = 120.0
RETRY_STATUSES = frozenset({502, 503, 504})
DOWNLOAD_CHUNK = 256 * 1024
CONNECTED = ""  # the event id `events` yields first, once the stream is open
View = dict[str, Any]


class GatewayError(Exception):
    """The command cannot go on; the message says why in one line."""


class Unreachable(GatewayError):
    pass


class Unauthorized(GatewayError):
    pass


class Refused(GatewayError):
    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"the gateway refused: {message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class Busy(Refused):
    """Nothing was stored; the same request may be sent again after `retry_after` seconds.
    `limit`: the bound the gateway named (RateLimit-Policy q=), when a request exceeds it."""

    def __init__(self, status: int, code: str, message: str, retry_after: float, limit: int | None) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after
        self.limit = limit


class NoEventStream(GatewayError):
    """This gateway has no live event stream: follow by listing instead."""


class DownloadError(Exception):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Gateway:
    """One gateway at `url`, called with `key`; open with `async with`."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self._key_headers = {KEY_HEADER: key} if key else {}
        self._session: aiohttp.ClientSession | None = None
        self._answered = False  # once it has, connection failures are outages to wait out

    async def __aenter__(self) -> Gateway:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=15, sock_read=120),
            # No cookies: the CDN's and the gateway's answers must not follow us around.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Gateway(...)`"
        return self._session

    # -- the calls ---------------------------------------------------------------------------------

    async def submit_batch(self, items: list[dict[str, Any]], idempotency_key: str) -> tuple[str, list[View]]:
        """POST /api/generations/batch: all of `items` or none; the batch id and its generations.

        Safe to repeat: the same key and items answer what the first request stored.
        """
        body = await self._call(
            "POST",
            "/api/generations/batch",
            json={"items": items},
            headers={"Idempotency-Key": idempotency_key},
        )
        return str(body["batch_id"]), list(body["data"])

    async def upload(self, filename: str, data: bytes) -> str:
        """POST /api/generations/upload: the image's public_url, once it is on an account."""

        def form() -> aiohttp.FormData:  # a form is spent once sent: a new one for each attempt
            fresh = aiohttp.FormData()
            fresh.add_field("file", data, filename=filename, content_type="application/octet-stream")
            return fresh

        while True:
            try:
                body = await self._call("POST", "/api/generations/upload", form=form)
            except Busy as busy:
                await asyncio.sleep(busy.retry_after)  # the uploads in flight are at their bound
                continue
            return str(body["data"]["public_url"])

    async def by_ids(self, ids: Sequence[str]) -> list[View]:
        """The generations with these ids, a hundred per request."""
        found: list[View] = []
        for start in range(0, len(ids), IDS_PER_REQUEST):
            chunk = ids[start : start + IDS_PER_REQUEST]
            body = await self._call(
                "GET", "/api/generations", params={"ids": ",".join(chunk), "limit": str(len(chunk))}
            )
            found.extend(body["data"])
        return found

    async def batch(self, batch_id: str) -> list[View]:
        """Every generation of a batch, in the order it was submitted."""
        found: list[View] = []
        while True:
            body = await self._call(
                "GET",
                "/api/generations",
                params={"batch_id": batch_id, "offset": str(len(found)), "limit": str(PAGE)},
            )
            page = list(body["data"])
            found.extend(page)
            if len(page) < PAGE:
                return found[::-1]  # the list is newest first; a batch's items are a microsecond apart

    async def generation(self, gen_id: str) -> View:
        body = await self._call("GET", f"/api/generations/{gen_id}")
        return dict(body["data"])

    async def events(self, last_event_id: str | None) -> AsyncIterator[tuple[str, View]]:
        """GET /api/generations/events: (event id, generation) as they happen, after `last_event_id`.

        First yields (CONNECTED, {}) once the stream is open: from then on no change is missed, so
        that is when to read where things stand. Ends when the stream does; raises NoEventStream
        when the gateway has none.
        """
        headers = {**self._key_headers, "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            response = await self.session.get(
                self.url + "/api/generations/events",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=15, sock_read=90),
            )
        except (aiohttp.ClientError, OSError) as error:
            raise Unreachable(f"cannot reach the gateway at {self.url}: {_reason(error)}") from None
        async with response:
            if response.status in (404, 405):
                raise NoEventStream("this gateway has no event stream")
            if response.status >= 400:
                await self._raise_for(response)
            if not response.content_type.startswith("text/event-stream"):
                raise NoEventStream(f"the event stream answered {response.content_type}")
            self._answered = True
            yield CONNECTED, {}
            try:
                async for event in _parse_stream(response.content):
                    yield event
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise Unreachable(f"the event stream broke off: {_reason(error)}") from None

    async def download(self, url: str, destination: Path) -> int:
        """The video at `url` into `destination`, through a temporary file renamed at the end, so
        an interrupted download never leaves a truncated file under the final name. No key is sent."""
        partial = destination.with_name(f".{destination.name}.part")
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=600, sock_read=60)
            ) as response:
                if response.status != 200:
                    raise DownloadError(f"the video's URL answered {response.status}", status=response.status)
                expected = response.content_length
                size = 0
                with partial.open("wb") as file:
                    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                        file.write(chunk)
                        size += len(chunk)
                    file.flush()
                    os.fsync(file.fileno())
                if expected is not None and size != expected:
                    raise DownloadError(f"the download stopped at {size} of {expected} bytes")
            os.replace(partial, destination)
            return size
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise DownloadError(f"the download failed: {_reason(error)}") from None
        finally:
            partial.unlink(missing_ok=True)

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        """One API call: its JSON answer, or the error it amounts to. Outages after the gateway
        has answered once are waited out (every call here is safe to repeat)."""
        headers = {**self._key_headers, **options.pop("headers", {})}
        form: Callable[[], aiohttp.FormData] | None = options.pop("form", None)
        deadline: float | None = None
        delay = 0.5
        while True:
            if form is not None:
                options["data"] = form()
            try:
                async with self.session.request(
                    method, self.url + path, headers=headers, **options
                ) as response:
                    if response.status in RETRY_STATUSES and "Retry-After" not in response.headers:
                        raise _Transient(await _said(response))
                    if response.status >= 400:
                        await self._raise_for(response)
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        raise _Transient("an answer that is not JSON") from None
                    self._answered = True
                    if not isinstance(body, dict):
                        raise GatewayError(f"{path} answered something that is not a JSON object")
                    return body
            except (aiohttp.ClientError, OSError, TimeoutError, _Transient) as error:
                if not self._answered:
                    raise Unreachable(f"cannot reach the gateway at {self.url}: {_reason(error)}") from None
                now = time.monotonic()
                deadline = deadline or now + OUTAGE_SECONDS
                if now > deadline:
                    raise Unreachable(
                        f"the gateway at {self.url} stopped answering: {_reason(error)}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _raise_for(self, response: aiohttp.ClientResponse) -> None:
        text = await response.text(errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": " ".join(text.split())[:200] or response.reason or "", "code": "http_error"}
        message = str(body.get("message") or response.reason)
        code = str(body.get("code") or "error")
        self._answered = True
        if response.status == 401:
            raise Unauthorized(f"the gateway refused the key: {message} (check --key or LUMA_QUEUE_KEY)")
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if response.status == 429 or (response.status == 503 and retry_after is not None):
            raise Busy(
                response.status,
                code,
                message,
                retry_after if retry_after is not None else 1.0,
                _policy_limit(response.headers.get("RateLimit-Policy")),
            )
        raise Refused(response.status, code, message, body)


async def _parse_stream(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, View]]:
    """Server-Sent Events: each `generation` event's id and data, as the lines come in."""
    event_id: str | None = None
    kind = "message"
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data and kind == "generation" and event_id:
                with contextlib.suppress(ValueError):
                    yield event_id, json.loads("\n".join(data))
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: connected, heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


class _Transient(Exception):
    """An answer worth asking again for (a proxy's 502, an api restarting)."""


async def _said(response: aiohttp.ClientResponse) -> str:
    """A short account of an error answer: its JSON message, else its status."""
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return f"{message} ({response.status})" if message else f"{response.status} {response.reason}"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, min(seconds, 3600.0)) if math.isfinite(seconds) else None


def _policy_limit(value: str | None) -> int | None:
    """q= of an IETF RateLimit-Policy field: the most one request may ask for."""
    match = re.search(r";\s*q=(\d+)", value or "")
    return int(match.group(1)) if match else None


def _reason(error: BaseException) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return error.os_error.strerror or str(error.os_error)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
