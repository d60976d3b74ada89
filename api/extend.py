"""Extend: a new generation that continues a completed one, queued like any other.

On a web account it is the web API's extend route on the account that made the original; on an
official account a create whose `keyframes.frame0` is `{type: "generation", id}`. Either way only
the original's account can run it (its upstream id means nothing elsewhere), so the new record is
pinned there (`pin_account`), and everything else (queue, intent and reconcile, webhooks, events)
is what every generation gets.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import submissions
from api.appkeys import REGISTRY, STORE
from api.auth import Access, Caller, requires
from api.errors import NotExtendable, NotFound
from api.parse import body_as
from api.respond import json_response
from shared.accounts import UnknownAccount
from shared.models import CreateRequest, GenerationRecord, http_url


class ExtendRequest(BaseModel):
    """The body of POST /api/generations/{id}/extend; every field may be left out."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    # Unset: the original's prompt.
    prompt: str | None = Field(default=None, min_length=1, max_length=5000)
    callback_url: str | None = None

    @field_validator("callback_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value or None)


async def start_extend(
    request: web.Request, caller: Caller, gen_id: str, extension: ExtendRequest
) -> submissions.Submitted:
    """Queue an extend of the caller's generation `gen_id`; NotFound, NotExtendable otherwise."""
    original = await request.app[STORE].get_owned(caller.owner, gen_id)
    if original is None:
        raise NotFound(f"no generation {gen_id[:100]!r}")
    if original.state != "completed" or not original.upstream_id or not original.account:
        raise NotExtendable(
            f"generation {gen_id!r} is {original.state}: only a completed one can be extended"
        )
    try:
        account = await request.app[REGISTRY].get(original.account)
    except UnknownAccount:
        raise NotExtendable(f"the account that made {gen_id!r} is no longer in the pool") from None
    create = CreateRequest(
        prompt=extension.prompt or original.prompt,
        aspect_ratio=original.aspect_ratio,
        callback_url=extension.callback_url,
        provider=account.kind,
    )

    def continues(record: GenerationRecord) -> None:
        record.extend_of = original.id
        record.extend_upstream_id = original.upstream_id
        record.pin_account = original.account
        record.model = original.model

    body = {"extend_of": gen_id, **extension.model_dump()}
    return await submissions.submit(request, caller, [create], kind="extend", body=body, adjust=continues)


@requires(Access.HOLDER)
async def extend_generation(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/{id}/extend: continue a completed generation (optional `prompt`)."""
    extension = await body_as(request, ExtendRequest) if request.body_exists else ExtendRequest()
    done = await start_extend(request, caller, request.match_info["id"], extension)
    return json_response({"message": "Success", "data": done.views}, headers=done.headers)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/generations/{id}/extend", extend_generation)
