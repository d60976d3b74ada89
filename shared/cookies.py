"""The cookie string of a Luma web session: what operators paste and what Set-Cookie rotates.

Shared by the settings and the admin API (normalizing what an operator gives) and the upstream
client (merging every Set-Cookie into the account's cookie so the session stays alive).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime


def normalize_cookie(raw: str) -> str:
    """A Cookie header value from what an operator pasted: a bare token means `access_token=<token>`."""
    value = raw.strip()
    if "\r" in value or "\n" in value:
        raise ValueError("cookie must be a single line")
    if value.lower().startswith("cookie:"):
        value = value[len("cookie:") :].strip()
    if not value:
        raise ValueError("cookie is empty")
    if "=" not in value:
        return f"access_token={value}"
    return _format_cookie(parse_cookie(value))


def parse_cookie(cookie: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in cookie.split(";"):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if sep and name:
            pairs.append((name, value.strip()))
    return pairs


def _format_cookie(pairs: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"{name}={value}" for name, value in pairs)


def _set_cookie_pair(header: str, now: float) -> tuple[str, str | None] | None:
    """(name, value) set by one Set-Cookie header, value None when it deletes; None if unparsable."""
    first, *attributes = header.split(";")
    name, sep, value = first.strip().partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        return None
    if not value:
        return name, None
    max_age: str | None = None
    expires: str | None = None
    for attribute in attributes:
        key, _, attr_value = attribute.strip().partition("=")
        key = key.strip().lower()
        if key == "max-age":
            max_age = attr_value.strip()
        elif key == "expires":
            expires = attr_value.strip()
    if max_age is not None:  # Max-Age wins over Expires (RFC 6265 §5.3)
        try:
            if int(max_age) <= 0:
                return name, None
        except ValueError:
            pass
        return name, value
    if expires is not None:
        when = http_date(expires)
        if when is not None and when <= now:
            return name, None
    return name, value


def merge_set_cookie(cookie: str, set_cookie_headers: Iterable[str], *, now: float | None = None) -> str:
    """The cookie string after applying Set-Cookie headers: replace in place, append, or drop."""
    moment = time.time() if now is None else now
    pairs = parse_cookie(cookie)
    for header in set_cookie_headers:
        parsed = _set_cookie_pair(header, moment)
        if parsed is None:
            continue
        name, value = parsed
        index = next((i for i, (existing, _) in enumerate(pairs) if existing == name), None)
        if value is None:
            if index is not None:
                del pairs[index]
        elif index is None:
            pairs.append((name, value))
        else:
            pairs[index] = (name, value)
    return _format_cookie(pairs)


def http_date(value: str) -> float | None:
    """POSIX time of an HTTP date, also in the old cookie form `Wed, 21-Oct-2015 07:28:00 GMT`."""
    value = re.sub(r"(\d{1,2})-([A-Za-z]{3})-(\d{2,4})", r"\1 \2 \3", value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
