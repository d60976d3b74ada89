"""`/_sim/...`: what tests, benchmarks and the dev stack use to steer and observe the simulator.

No auth, no faults and no request logging here: these calls are not traffic to Luma.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.config import DEFAULT_CAPACITY, AccountSpec, OfficialAccountSpec
from simulator.keys import STATE_KEY
from simulator.schemas import RequestInvalid, parse_body
from simulator.state import SimulatorState


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddAccountBody(_Body):
    name: str = Field(min_length=1)
    token: str = Field(min_length=1)
    capacity: int = Field(default=DEFAULT_CAPACITY, ge=0)
    plan: str | None = None


class TokenBody(_Body):
    token: str = Field(min_length=1)


class CapacityBody(_Body):
    capacity: int = Field(ge=0)
    consumed: int | None = Field(default=None, ge=0)
    plan: str | None = None


class CreditsBody(_Body):
    credits_cents: int = Field(ge=0)


class FailNextBody(_Body):
    status: int = Field(ge=100, le=599)
    count: int = Field(default=1, ge=1)
    path_contains: str | None = None
    method: str | None = None
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    content_type: str | None = None


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(_state(request).config.runtime_view())


async def patch_config(request: web.Request) -> web.Response:
    try:
        changes = json.loads(await request.read())
    except ValueError:
        changes = None
    if not isinstance(changes, dict):
        raise RequestInvalid([{"type": "dict_type", "loc": ["body"], "msg": "Expected an object"}])
    try:
        config = _state(request).update_config(changes)
    except ValidationError as exc:
        raise RequestInvalid(
            [{"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        ) from None
    except ValueError as exc:
        raise RequestInvalid([{"type": "value_error", "loc": ["body"], "msg": str(exc)}]) from None
    return web.json_response(config.runtime_view())


async def list_accounts(request: web.Request) -> web.Response:
    return web.json_response(list(_state(request).account_stats().values()))


async def add_account(request: web.Request) -> web.Response:
    body = parse_body(AddAccountBody, await request.read())
    state = _state(request)
    account = state.add_account(
        AccountSpec(name=body.name, token=body.token, capacity=body.capacity), plan=body.plan
    )
    return web.json_response(account.stats(state.now()), status=201)


async def expire_account(request: web.Request) -> web.Response:
    state = _state(request)
    account = state.expire_account(request.match_info["name"])
    return web.json_response(account.stats(state.now()))


async def set_token(request: web.Request) -> web.Response:
    body = parse_body(TokenBody, await request.read())
    state = _state(request)
    account = state.set_token(request.match_info["name"], body.token)
    return web.json_response(account.stats(state.now()))


async def set_capacity(request: web.Request) -> web.Response:
    body = parse_body(CapacityBody, await request.read())
    state = _state(request)
    account = state.set_capacity(request.match_info["name"], body.capacity, body.consumed, body.plan)
    return web.json_response(account.stats(state.now()))


async def add_official_account(request: web.Request) -> web.Response:
    spec = parse_body(OfficialAccountSpec, await request.read())
    state = _state(request)
    return web.json_response(state.add_official_account(spec).stats(state.now()), status=201)


async def set_credits(request: web.Request) -> web.Response:
    body = parse_body(CreditsBody, await request.read())
    state = _state(request)
    account = state.set_credits(request.match_info["name"], body.credits_cents)
    return web.json_response(account.stats(state.now()))


async def get_callbacks(request: web.Request) -> web.Response:
    return web.json_response(_state(request).callback_log)


async def fail_next(request: web.Request) -> web.Response:
    body = parse_body(FailNextBody, await request.read())
    rule = _state(request).fail_next(
        body.status,
        body.count,
        body.path_contains,
        body.body,
        method=body.method,
        headers=body.headers,
        content_type=body.content_type,
    )
    return web.json_response(rule.report(), status=201)


async def clear_fail_next(request: web.Request) -> web.Response:
    _state(request).clear_faults()
    return web.json_response({"ok": True})


async def get_requests(request: web.Request) -> web.Response:
    records = _state(request).requests(request.query.get("path_contains"), request.query.get("method"))
    return web.json_response([r.report() for r in records])


async def clear_requests(request: web.Request) -> web.Response:
    _state(request).clear_requests()
    return web.json_response({"ok": True})


async def get_generations(request: web.Request) -> web.Response:
    return web.json_response(_state(request).generation_reports(request.query.get("account")))


async def get_uploads(request: web.Request) -> web.Response:
    return web.json_response([u.report() for u in _state(request).uploads.values()])


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(_state(request).stats())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_sim/health", health)
    r.add_get("/_sim/config", get_config)
    r.add_patch("/_sim/config", patch_config)
    r.add_get("/_sim/accounts", list_accounts)
    r.add_post("/_sim/accounts", add_account)
    r.add_post("/_sim/accounts/{name}/expire", expire_account)
    r.add_post("/_sim/accounts/{name}/token", set_token)
    r.add_post("/_sim/accounts/{name}/capacity", set_capacity)
    r.add_post("/_sim/official_accounts", add_official_account)
    r.add_post("/_sim/official_accounts/{name}/credits", set_credits)
    r.add_get("/_sim/callbacks", get_callbacks)
    r.add_post("/_sim/fail_next", fail_next)
    r.add_delete("/_sim/fail_next", clear_fail_next)
    r.add_get("/_sim/requests", get_requests)
    r.add_delete("/_sim/requests", clear_requests)
    r.add_get("/_sim/generations", get_generations)
    r.add_get("/_sim/uploads", get_uploads)
    r.add_get("/_sim/stats", get_stats)
