"""Who is calling: the one place that checks the `Secret-Key` header.

Each SECRET_KEY is one key holder, known by the first 16 hex digits of its SHA-256 (the key itself
is never stored or logged). ADMIN_KEY opens /api/admin/* and adds per-account rows to usage. With no
SECRET_KEY configured the api is open and every caller is the holder "open".
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import AdminDisabled, Unauthorized

SECRET_KEY_HEADER = "Secret-Key"
OPEN_OWNER = "open"


class Access(Enum):
    HOLDER = "holder"  # a SECRET_KEY (or anyone, when none is configured)
    HOLDER_OR_ADMIN = "holder_or_admin"  # as HOLDER, and ADMIN_KEY is accepted too
    ADMIN = "admin"  # ADMIN_KEY only


@dataclass(frozen=True)
class Caller:
    owner: str  # whose records these are
    admin: bool  # presented ADMIN_KEY


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def owner_id(key: str) -> str:
    return _digest(key).hex()[:16]


class KeyRing:
    """The configured keys as digests, compared in constant time."""

    def __init__(self, secret_keys: list[str], admin_key: str) -> None:
        self._holders = [(_digest(key), owner_id(key)) for key in secret_keys if key]
        self._admin = _digest(admin_key) if admin_key else None

    @property
    def open(self) -> bool:
        return not self._holders

    @property
    def holders(self) -> list[str]:
        """Every key holder's id, in the order SECRET_KEY lists them ("open" when there is none)."""
        return [holder for _, holder in self._holders] if self._holders else [OPEN_OWNER]

    def authorize(self, presented: str | None, access: Access) -> Caller:
        """The caller behind `presented`, or Unauthorized / AdminDisabled."""
        if access is Access.ADMIN and self._admin is None:
            raise AdminDisabled
        # Digests have a fixed length, so compare_digest takes the same time whatever was sent,
        # and every key is compared (no early exit) so timing does not tell which one matched.
        digest = _digest(presented or "")
        owner: str | None = None
        for key, holder in self._holders:
            if hmac.compare_digest(digest, key):
                owner = holder
        admin = self._admin is not None and hmac.compare_digest(digest, self._admin)
        if access is Access.ADMIN:
            if not admin:
                raise Unauthorized(_refusal(presented, "the admin API needs ADMIN_KEY"))
            return Caller(owner=owner or owner_id(presented or ""), admin=True)
        if self.open:
            return Caller(owner=OPEN_OWNER, admin=admin)
        if owner is not None:
            return Caller(owner=owner, admin=admin)
        if admin and access is Access.HOLDER_OR_ADMIN:
            return Caller(owner=owner_id(presented or ""), admin=True)
        raise Unauthorized(_refusal(presented, "this api needs one of its SECRET_KEYs"))


def _refusal(presented: str | None, need: str) -> str:
    return f"missing Secret-Key header: {need}" if not presented else f"invalid Secret-Key: {need}"


KEYRING = web.AppKey("keyring", KeyRing)

GuardedHandler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


KEY_QUERY_PARAMETER = "key"


def requires(access: Access, *, key_in_query: bool = False) -> Callable[[GuardedHandler], Handler]:
    """Decorate a handler `(request, caller)` so it runs only for a caller with `access`.

    `key_in_query`: the key may also come as `?key=` (for EventSource, which cannot send headers;
    only the live event stream allows it).
    """

    def decorate(handler: GuardedHandler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            presented = request.headers.get(SECRET_KEY_HEADER)
            if presented is None and key_in_query:
                presented = request.query.get(KEY_QUERY_PARAMETER)
            caller = request.app[KEYRING].authorize(presented, access)
            return await handler(request, caller)

        return guarded

    return decorate
