"""One function per endpoint: parse, call the store / registry / queue, respond.

Routes and their seed shapes are in UPSTREAM.md §3; api/app.py wires them up. Errors are raised
(api/errors.py renders them), and who may call what is decided by `requires` (api/auth.py).
"""

from __future__ import annotations

from aiohttp import web

from api import pool, uploads
from api.appkeys import ARQ, EVENTS, REDIS, REGISTRY, SETTINGS, STORE
from api.auth import Access, Caller, requires
from api.errors import AccountExistsError, CallbackNotAllowed, NotFound, QueueFullError, UnknownAccountError
from api.parse import body_as, query_as
from shared import keys, netguard
from shared.accounts import AccountExists, AccountView, UnknownAccount
from shared.events import Event, EventsQuery, GenerationEvent
from shared.models import AccountUpdate, CreateRequest, GenerationRecord, ListQuery
from shared.settings import AccountConfig
from shared.store import QueueFull


async def health(request: web.Request) -> web.Response:
    """GET /healthz, unauthenticated: 200 while this api can reach Redis (503 JSON otherwise)."""
    await request.app[REDIS].ping()
    return web.json_response({"status": "ok"})


@requires(Access.HOLDER)
async def list_generations(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations?offset=0&limit=10: the caller's generations, newest first."""
    query = query_as(request, ListQuery, max_limit=request.app[SETTINGS].list_max_limit)
    records = await request.app[STORE].list_owned(caller.owner, query.offset, query.limit)
    return web.json_response({"data": await _views(request, records)})


@requires(Access.HOLDER)
async def get_generation(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/{id}: one of the caller's generations; anyone else's is unknown."""
    gen_id = request.match_info["id"]
    record = await request.app[STORE].get_owned(caller.owner, gen_id)
    if record is None:
        raise NotFound(f"no generation {gen_id[:100]!r}")
    [view] = await _views(request, [record])
    return web.json_response({"data": view})


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
    return web.json_response({"data": [event.public(admin=caller.admin) for event in history]})


@requires(Access.ADMIN)
async def recent_events(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/admin/events?limit=100&before=ID: the newest entries of the whole event log."""
    query = query_as(request, EventsQuery)
    events = await request.app[EVENTS].recent(query.limit, before=query.before)
    return web.json_response({"data": [_event_view(event) for event in events]})


def _event_view(event: Event) -> dict[str, object]:
    if isinstance(event, GenerationEvent):
        return {"kind": "generation", **event.public(admin=True)}
    return {"kind": "account", **event.model_dump(by_alias=True)}


@requires(Access.HOLDER_OR_ADMIN)
async def get_usage(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/generations/usage: the pool's cached usage; the admin also sees every account."""
    summary = await pool.usage(request.app[REGISTRY], with_accounts=caller.admin)
    return web.json_response({"data": summary})


@requires(Access.HOLDER)
async def create_generation(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/create: store the generation and queue it; answers at once."""
    body = await body_as(request, CreateRequest)
    app = request.app
    await _check_callback(request, body.callback_url)
    record = GenerationRecord.new(caller.owner, body)
    # Read once: it bounds the queue here and feeds the answer's estimate below.
    accounts = await app[REGISTRY].all()
    max_depth = pool.max_queue_depth(accounts, app[SETTINGS])
    try:
        await app[STORE].enqueue_new(record, max_depth=max_depth, pin=await _upload_account(request, body))
    except QueueFull:
        retry_after = await pool.retry_after_seconds(app[REGISTRY], app[STORE])
        raise QueueFullError(
            f"the queue is full ({max_depth} waiting); nothing was stored, retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        ) from None
    shown = await pool.caller_views(app[REGISTRY], app[STORE], [record], accounts)
    return web.json_response({"message": "Success", "data": shown})


@requires(Access.HOLDER)
async def upload_image(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/generations/upload: answers once a worker has put the image on an account."""
    settings = request.app[SETTINGS]
    image = await uploads.read_image(request, settings.upload_max_bytes)
    result = await uploads.hand_to_worker(
        request.app[ARQ], image, wait_seconds=settings.upload_timeout_seconds
    )
    return web.json_response(
        {"data": {"id": result.id, "presigned_url": result.presigned_url, "public_url": result.public_url}}
    )


@requires(Access.ADMIN)
async def list_accounts(request: web.Request, caller: Caller) -> web.Response:
    """GET /api/admin/accounts: every account's state, load and usage (never its cookie)."""
    accounts = await request.app[REGISTRY].views()
    return web.json_response({"data": [account.model_dump() for account in accounts]})


@requires(Access.ADMIN)
async def add_account(request: web.Request, caller: Caller) -> web.Response:
    """POST /api/admin/accounts: put a new account in the pool."""
    config = await body_as(request, AccountConfig)
    if not config.base_url:
        config = config.model_copy(update={"base_url": request.app[SETTINGS].luma_base_url})
    try:
        await request.app[REGISTRY].add(config)
    except AccountExists:
        raise AccountExistsError(f"an account named {config.name!r} already exists") from None
    return web.json_response({"data": await _account_view(request, config.name)}, status=201)


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
            max_concurrency=change.max_concurrency,
            max_queue=change.max_queue,
            clear_max_queue="max_queue" in change.model_fields_set and change.max_queue is None,
        )
    except UnknownAccount:
        raise UnknownAccountError(f"no account named {name!r}") from None
    return web.json_response({"data": await _account_view(request, name)})


async def _views(request: web.Request, records: list[GenerationRecord]) -> list[dict[str, object]]:
    return await pool.caller_views(request.app[REGISTRY], request.app[STORE], records)


async def _check_callback(request: web.Request, url: str | None, field: str = "callback_url") -> None:
    """A callback_url that is, or resolves to, an address in our own networks is refused (SSRF)."""
    if url is None:
        return
    try:
        await netguard.check_url(url, allow_private=request.app[SETTINGS].webhook_allow_private_networks)
    except netguard.AddressNotAllowed as exc:
        raise CallbackNotAllowed(f"{field} is not allowed: {exc}", field=field) from None


async def _upload_account(request: web.Request, body: CreateRequest) -> str | None:
    """The account holding an image we uploaded: the generation must run there to see it."""
    for url in (body.image, body.image_end):
        if url:
            account = await request.app[REDIS].get(keys.upload_account(url))
            if account:
                return str(account)
    return None


async def _account_view(request: web.Request, name: str) -> dict[str, object]:
    views: list[AccountView] = await request.app[REGISTRY].views()
    for view in views:
        if view.name == name:
            return view.model_dump()
    raise UnknownAccountError(f"no account named {name!r}")
