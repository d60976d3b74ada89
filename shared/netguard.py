"""Where the gateway may send a request on a caller's behalf: the public internet, never its own network.

A caller names a URL (a webhook's `callback_url`) and our process connects to it, so a URL that
is, or resolves to, a loopback, private, link-local, multicast, reserved or unspecified address
(IPv4 or IPv6, IPv4-mapped IPv6 included) would let any key holder probe the machines around the
gateway. Such URLs are refused when they are given (`check_url`) and again when the connection is
made (`PublicOnlyResolver`, since DNS can answer differently by then). Development and tests lift
this with ALLOW_PRIVATE_NETWORKS-style settings; it is on by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressNotAllowed(ValueError):
    """The URL points (or resolves) somewhere the gateway must not connect to; the message says why."""


def forbidden(address: IPAddress) -> str | None:
    """Why the gateway must not connect to `address`, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, flag in (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
    ):
        if flag:
            return f"{address} is {kind} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse an http(s) URL whose host is, or resolves to, an address we must not reach."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise AddressNotAllowed("must be an http or https URL with a host")
    if allow_private:
        return
    host = parsed.host
    literal = _literal(host)
    if literal is not None:
        reason = forbidden(literal)
        if reason:
            raise AddressNotAllowed(reason)
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parsed.port or 443, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError:
        raise AddressNotAllowed(f"{host} does not resolve") from None
    for info in infos:
        reason = forbidden(ipaddress.ip_address(info[4][0]))
        if reason:
            raise AddressNotAllowed(f"{host} resolves to an address the gateway must not reach ({reason})")


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses: what is connected to is what was checked.

    aiohttp does not ask a resolver about IP literals, so a caller also checks those itself
    (`forbidden(ip_address(host))`) before connecting.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        allowed = [answer for answer in answers if forbidden(ipaddress.ip_address(answer["host"])) is None]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses the gateway must not connect to")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def connect_allowed(url: str, *, allow_private: bool) -> str | None:
    """For a URL about to be fetched: why its IP-literal host is refused (names are left to the resolver)."""
    if allow_private:
        return None
    literal = _literal(URL(url).host or "")
    return forbidden(literal) if literal is not None else None
