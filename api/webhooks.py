"""The webhook endpoints: a key holder's signing secret, a generation's deliveries, the admin's redeliver.

Deliveries themselves are made by the workers (worker/webhooks.py); these handlers only read and
change what shared/webhooks.py keeps.
"""

from __future__ import annotations

from aiohttp import web

from api.appkeys import STORE, WEBHOOKS
from api.auth import Access, Caller, requires
from api.errors import NotFound, NothingToRedeliver
from api.respond import json_response
from shared.models import GenerationRecord
from shared.webhooks import delivery_view


@requires(Access.HOLDER)
async def get_secret(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/webhooks/secret: the secret the caller's webhooks are signed with (made on first read)."""
    secret = await request.app[WEBHOOKS].secret(caller.owner)
    return json_response({"data": {"secret": secret}})


@requires(Access.HOLDER)
async def rotate_secret(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/webhooks/secret/rotate: a new secret; every attempt from now on is signed with it."""
    secret = await request.app[WEBHOOKS].rotate_secret(caller.owner)
    return json_response({"data": {"secret": secret}})


@requires(Access.HOLDER_OR_ADMIN)
async def list_deliveries(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/{id}/deliveries: each event's webhook with every attempt, in order.

    Its owner sees its own; the admin sees any; anyone else gets the 404 of an unknown id.
    """
    record = await _generation(request, caller)
    deliveries = await request.app[WEBHOOKS].deliveries(record.id)
    return json_response({"data": [delivery_view(*delivery) for delivery in deliveries]})


@requires(Access.ADMIN)
async def redeliver(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/admin/generations/{id}/redeliver: send every event of the generation again, in order."""
    record = await _generation(request, caller)
    if not record.callback_url:
        raise NothingToRedeliver("this generation has no callback_url: it has no webhooks to send")
    webhooks = request.app[WEBHOOKS]
    if not await webhooks.redeliver(record.id):
        raise NothingToRedeliver()
    deliveries = await webhooks.deliveries(record.id)
    return json_response(
        {"message": "Queued", "data": [delivery_view(*delivery) for delivery in deliveries]}, status=202
    )


async def _generation(request: web.Request, caller: Caller) -> GenerationRecord:
    gen_id = request.match_info["id"]
    record = await request.app[STORE].get(gen_id)
    if record is None or (record.owner != caller.owner and not caller.admin):
        raise NotFound(f"no generation {gen_id[:100]!r}")
    return record
