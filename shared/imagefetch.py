"""Fetching an image from a caller's URL, within bounds, from public addresses only.

Used where a caller names an image by URL (a create's external image, the /luma upload of a
URL): bounded by UPLOAD_MAX_BYTES, checked to be an image by its content type and its first
bytes, never from loopback, private, link-local or reserved addresses unless
ALLOW_PRIVATE_NETWORKS is set (shared/netguard.py), no redirects (one could lead anywhere).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import aiohttp

from shared import netguard

CHUNK_BYTES = 64 * 1024
# (content type, the bytes a file of that type starts with at an offset)
SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("image/jpeg", 0, b"\xff\xd8\xff"),
    ("image/png", 0, b"\x89PNG\r\n\x1a\n"),
    ("image/gif", 0, b"GIF8"),
    ("image/webp", 8, b"WEBP"),
)


class ImageUnreachable(Exception):
    """The image could not be had (or is not one, or is too large, or is somewhere we must not go)."""


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str


def image_type(data: bytes) -> str | None:
    """The image type its first bytes say, if it is one Luma takes."""
    for content_type, offset, signature in SIGNATURES:
        if data[offset : offset + len(signature)] == signature and (offset == 0 or data[:4] == b"RIFF"):
            return content_type
    return None


def public_only_session(allow_private: bool) -> aiohttp.ClientSession:
    """A session for callers' URLs: it connects only to public addresses (unless told otherwise)."""
    connector = aiohttp.TCPConnector(resolver=None if allow_private else netguard.PublicOnlyResolver())
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def fetch_image(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, within: float, allow_private: bool
) -> FetchedImage:
    """GET an image from a caller's URL, within bounds; ImageUnreachable says why not."""
    try:
        await netguard.check_url(url, allow_private=allow_private)
        refused = netguard.connect_allowed(url, allow_private=allow_private)
    except (netguard.AddressNotAllowed, ValueError) as exc:
        raise ImageUnreachable(f"{short_url(url)}: {exc}") from None
    if refused:
        raise ImageUnreachable(f"{short_url(url)}: {refused}")
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=within), allow_redirects=False
        ) as answer:
            if answer.status != 200:
                raise ImageUnreachable(f"{short_url(url)} answered {answer.status}")
            declared = answer.content_type
            if not declared.startswith("image/"):
                raise ImageUnreachable(f"{short_url(url)} is {declared or 'of no type'}, not an image")
            if answer.content_length is not None and answer.content_length > max_bytes:
                raise ImageUnreachable(f"{short_url(url)} is larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in answer.content.iter_chunked(CHUNK_BYTES):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise ImageUnreachable(f"{short_url(url)} is larger than {max_bytes} bytes")
    except (aiohttp.ClientError, TimeoutError, OSError, ipaddress.AddressValueError) as exc:
        raise ImageUnreachable(f"{short_url(url)} could not be fetched: {type(exc).__name__}") from None
    kind = image_type(bytes(data))
    if kind is None:
        raise ImageUnreachable(f"{short_url(url)} is not a JPEG, PNG, GIF or WebP image")
    return FetchedImage(data=bytes(data), content_type=kind)


def short_url(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
