"""How every process reaches Redis, and how a Redis address may be shown."""

from __future__ import annotations

import urllib.parse


def redacted_url(url: str) -> str:
    """The Redis URL without its password, for logs and banners: `redis://user:***@host:6379/0`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        # redis-py also reads a password from the query string (`?password=...`).
        query = [
            (name, "***" if "password" in name.lower() else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urllib.parse.urlencode(query, safe="*"))
    return urllib.parse.urlunsplit(parts)
