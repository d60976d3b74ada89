"""One function per endpoint: parse, call the store / registry / queue, respond.

Routes and their seed shapes are in UPSTREAM.md §3; api/app.py wires them up. Errors are raised
(api/errors.py renders them), and who may call what is decided by `requires` (api/auth.py).
"""

from __future__ import annotations

import re

from aiohttp import web
from redis.exceptions import RedisError

from api import events, pool, submissions, uploads
from api.appkeys import EVENT_HUB, EVENTS, REDIS, REGISTRY, SETTINGS, STORE
from api.auth import KEYRING, Access, Caller, requires
from api.errors import (
    AccountBusyError,
    AccountExistsError,
    AlreadyFinished,
    AlreadySubmitted,
    InvalidQuery,
    InvalidRequest,
    NotFound,
    UnknownAccountError,
    UnknownHolder,
)
from api.parse import body_as, query_as
from api.respond import json_response
from shared.accounts import AccountExists, AccountView, UnknownAccount
from shared.events import Event, EventsQuery, GenerationEvent
from shared.health import AccountState
from shared.models import (
    AccountUpdate,
    BatchRequest,
    CreateRequest,
    GenerationRecord,
    HolderUpdate,
    ListQuery,
    RemoveAccountQuery,
)
from shared.settings import AccountConfig
from shared.states import NOT_SUBMITTED, FailureReason
from shared.store import AccountBusy, NoSuchAccount, views

EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


async def health(request: web.Request) -> web.Response:
    """GET /healthz, unauthenticated: 200 while this api can reach Redis (503 JSON otherwise)."""
    await request.app[REDIS].ping()
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """GET /readyz, unauthenticated: 200 when Redis answers and an enabled account can take work.

    Otherwise 503 naming the check that failed, so a load balancer stops sending creates that
    could only wait (a live api that is not ready still answers reads: /healthz says it is alive).
    """
    checks: dict[str, dict[str, object]] = {}
    try:
        await request.app[REDIS].ping()
        accounts = await request.app[REGISTRY].views()
    except (RedisError, OSError) as exc:
        checks["redis"] = {"ok": False, "detail": f"Redis does not answer: {type(exc).__name__}"}
        checks["accounts"] = {"ok": False, "detail": "unknown while Redis does not answer"}
    else:
        checks["redis"] = {"ok": True, "detail": "Redis answers"}
        checks["accounts"] = _accounts_check(accounts)
    is_ready = all(check["ok"] for check in checks.values())
    return json_response(
        {"status": "ready" if is_ready else "not_ready", "checks": checks}, status=200 if is_ready else 503
    )


def _accounts_check(accounts: list[AccountView]) -> dict[str, object]:
    usable = [account.name for account in accounts if account.usable]
    if usable:
        return {"ok": True, "detail": f"{len(usable)} of {len(accounts)} accounts can take work"}
    if not accounts:
        return {"ok": False, "detail": "no account is configured"}
    why = ", ".join(
        f"{account.name} {'cooling' if account.state == AccountState.ACTIVE else account.state}"
        for account in accounts[:20]
    )
    return {
        "ok": False,
        "detail": f"no account can take work (not expired, not spent, enabled, circuit closed): {why}",
    }


@requires(Access.HOLDER)
async def list_generations(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations?offset=0&limit=10: the caller's generations, newest first."""
    query = query_as(request, ListQuery, max_limit=request.app[SETTINGS].list_max_limit)
    store = request.app[STORE]
    if query.ids is not None:
        records = [
            record
            for record in await store.get_owned_many(caller.owner, query.ids)
            if (query.state is None or record.state in query.state)
            and (query.batch_id is None or record.batch_id == query.batch_id)
        ][query.offset : query.offset + query.limit]
    else:
        records = await store.list_owned(
            caller.owner, query.offset, query.limit, states=query.state, batch_id=query.batch_id
        )
    return json_response({"data": await _views(request, records)})


@requires(Access.HOLDER)
async def get_generation(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/{id}: one of the caller's generations; anyone else's is unknown."""
    gen_id = request.match_info["id"]
    record = await request.app[STORE].get_owned(caller.owner, gen_id)
    if record is None:
        raise NotFound(f"no generation {gen_id[:100]!r}")
    [view] = await _views(request, [record])
    return json_response({"data": view})


@requires(Access.HOLDER_OR_ADMIN)
async def generation_events(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/{id}/events: every transition of one generation, oldest first.

    Its owner sees its own; the admin sees any generation's, with owner and account.
    """
    gen_id = request.match_info["id"]
    record = await request.app[STORE].get(gen_id)
    if record is None or (record.owner != caller.owner and not caller.admin):
        raise NotFound(f"no generation {gen_id[:100]!r}")
    history = await request.app[EVENTS].history(gen_id)
    return json_response({"data": [event.public(admin=caller.admin) for event in history]})


@requires(Access.HOLDER, key_in_query=True)
async def generation_stream(request: web.Request, caller: Caller) -> web.StreamResponse:
    """GET /api/generations/events: Server-Sent Events of the caller's generations (api/events.py)."""
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if last is not None and not EVENT_ID.fullmatch(last):
        raise InvalidQuery(f"Last-Event-ID must be an event id like 1733280000123-0, got {last[:40]!r}")
    app = request.app
    return await events.stream(
        request,
        app[EVENT_HUB],
        app[STORE],
        caller.owner,
        last_event_id=last,
        heartbeat_seconds=app[SETTINGS].events_heartbeat_seconds,
    )


@requires(Access.ADMIN)
async def recent_events(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/admin/events?limit=100&before=ID: the newest entries of the whole event log."""
    query = query_as(request, EventsQuery)
    events = await request.app[EVENTS].recent(query.limit, before=query.before)
    return json_response({"data": [_event_view(event) for event in events]})


def _event_view(event: Event) -> dict[str, object]:
    if isinstance(event, GenerationEvent):
        return {"kind": "generation", **event.public(admin=True)}
    return {"kind": "account", **event.model_dump(by_alias=True)}


@requires(Access.HOLDER_OR_ADMIN)
async def get_usage(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/usage: the pool's cached usage; the admin also sees every account."""
    summary = await pool.usage(request.app[REGISTRY], with_accounts=caller.admin)
    return json_response({"data": summary})


@requires(Access.HOLDER)
async def create_generation(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/create: store the generation and queue it; answers at once."""
    body = await body_as(request, CreateRequest)
    done = await submissions.submit(request, caller, [body], kind="create", body=body.model_dump())
    return json_response({"message": "Success", "data": done.views}, headers=done.headers)


@requires(Access.HOLDER)
async def create_batch(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/batch: many generations in one request, all or nothing, in order."""
    settings = request.app[SETTINGS]
    body = await body_as(
        request, BatchRequest, max_bytes=settings.batch_max_body_bytes, max_items=settings.batch_max_items
    )
    done = await submissions.submit(request, caller, body.creates(), kind="batch", body=body.model_dump())
    return json_response(
        {"message": "Success", "batch_id": done.batch_id, "data": done.views}, headers=done.headers
    )


@requires(Access.HOLDER)
async def cancel_generation(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/{id}/cancel: take back a generation that has not reached Luma yet."""
    gen_id = request.match_info["id"]
    store = request.app[STORE]
    record = await store.get_owned(caller.owner, gen_id)
    if record is None:
        raise NotFound(f"no generation {gen_id[:100]!r}")
    if record.phase in NOT_SUBMITTED:
        cancelled = await store.cancel(record)
        record = cancelled.record or record
    if record.failure_reason == FailureReason.CANCELLED:
        [view] = await _views(request, [record])  # cancelled, now or by an earlier call
        return json_response({"data": view})
    if record.terminal:
        raise AlreadyFinished(f"generation {gen_id!r} has already {record.state}")
    raise AlreadySubmitted


@requires(Access.HOLDER)
async def upload_image(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/upload: answers once a worker has put the image on an account."""
    settings = request.app[SETTINGS]
    image = await uploads.read_image(request, settings.upload_max_bytes)
    result = await uploads.hand_to_worker(request.app, image)
    return json_response(
        {"data": {"id": result.id, "presigned_url": result.presigned_url, "public_url": result.public_url}}
    )


@requires(Access.ADMIN)
async def list_accounts(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/admin/accounts: every account's state, load and usage (never its cookie)."""
    accounts = await request.app[REGISTRY].views()
    return json_response({"data": [account.model_dump() for account in accounts]})


@requires(Access.ADMIN)
async def add_account(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/admin/accounts: put a new account in the pool."""
    config = request.app[SETTINGS].with_defaults(await body_as(request, AccountConfig))
    try:
        await request.app[REGISTRY].add(config)
    except AccountExists:
        raise AccountExistsError(f"an account named {config.name!r} already exists") from None
    return json_response({"data": await _account_view(request, config.name)}, status=201)


@requires(Access.ADMIN)
async def update_account(request: web.Request, caller: Caller) -> web.Response:
    """PATCH /api/admin/accounts/{name}: enable, disable, new cookie, new limits."""
    name = request.match_info["name"]
    change = await body_as(request, AccountUpdate)
    try:
        await request.app[REGISTRY].update(
            name,
            enabled=change.enabled,
            cookie=change.cookie,
            api_key=change.api_key,
            max_concurrency=change.max_concurrency,
            creates_per_minute=change.creates_per_minute,
            max_queue=change.max_queue,
            clear_max_queue="max_queue" in change.model_fields_set and change.max_queue is None,
        )
    except UnknownAccount:
        raise UnknownAccountError(f"no account named {name!r}") from None
    except ValueError as wrong_kind:
        raise InvalidRequest(f"invalid request: {wrong_kind}") from None
    return json_response({"data": await _account_view(request, name)})


@requires(Access.ADMIN)
async def remove_account(request: web.Request, caller: Caller) -> web.Response:
    """DELETE /api/admin/accounts/{name}[?force=true]: take an account out of the pool.

    Refused (409 account_busy) while it has generations in flight, unless `force`, which sends
    them back to the front of their owners' queues to run on another account.
    """
    name = request.match_info["name"]
    query = query_as(request, RemoveAccountQuery)
    try:
        rerouted = await request.app[STORE].remove_account(name, force=query.force)
    except NoSuchAccount:
        raise UnknownAccountError(f"no account named {name[:64]!r}") from None
    except AccountBusy as busy:
        raise AccountBusyError(
            f"account {name!r} has {busy.in_flight} generation(s) in flight; wait for them to end, "
            "or DELETE with ?force=true to send them back to the queue to run on another account",
            in_flight=busy.in_flight,
        ) from None
    configured = any(account.name == name for account in request.app[SETTINGS].accounts())
    return json_response(
        {"data": {"name": name, "removed": True, "rerouted": rerouted, "configured": configured}}
    )


@requires(Access.ADMIN)
async def list_holders(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/admin/holders: each key holder's queue, recent creates and limits."""
    owners = request.app[KEYRING].holders
    return json_response({"data": await _holder_views(request, owners)})


@requires(Access.ADMIN)
async def update_holder(request: web.Request, caller: Caller) -> web.Response:
    """PATCH /api/admin/holders/{owner}: an operator's own limits for one holder (null: default)."""
    owner = request.match_info["owner"]
    if owner not in request.app[KEYRING].holders:
        raise UnknownHolder(f"no key holder {owner[:40]!r}; GET /api/admin/holders lists them")
    change = await body_as(request, HolderUpdate)
    await request.app[STORE].set_holder_overrides(
        owner, {name: getattr(change, name) for name in change.model_fields_set}
    )
    [view] = await _holder_views(request, [owner])
    return json_response({"data": view})


async def _holder_views(request: web.Request, owners: list[str]) -> list[dict[str, object]]:
    store = request.app[STORE]
    defaults = submissions.holder_limits(request.app[SETTINGS])
    overrides = await store.holder_overrides(owners)
    activity = await store.holder_activity(owners)
    return [
        {
            "owner": owner,
            "waiting": waiting,
            "creates_last_minute": recent,
            "max_queued": own.get("max_queued", defaults.max_queued),
            "creates_per_minute": own.get("creates_per_minute", defaults.creates_per_minute),
            "overridden": sorted(own),
        }
        for owner, own, (waiting, recent) in zip(owners, overrides, activity, strict=True)
    ]


async def _views(request: web.Request, records: list[GenerationRecord]) -> list[dict[str, object]]:
    """Seed-shaped views; waiting ones get a place and a wait (one more round trip, only for them)."""
    store = request.app[STORE]
    return views(records, await store.places(records))


async def _account_view(request: web.Request, name: str) -> dict[str, object]:
    views: list[AccountView] = await request.app[REGISTRY].views()
    for view in views:
        if view.name == name:
            return view.model_dump()
    raise UnknownAccountError(f"no account named {name!r}")
