"""Faults injected in front of the Luma API, as a load balancer or an overloaded backend produces them.

They are decided before routing and authentication, so a faulted create never creates anything.
Scripted faults (`fail_next`) win over random ones; random ones are drawn from the state's fault
RNG, three draws per request whatever the rates, so changing one rate leaves the others' sequence
unchanged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web

from simulator.models import FaultRule
from simulator.state import SimulatorState

# What gateways in front of a FastAPI app answer: FastAPI's own plain 500, proxy HTML pages.
ERROR_ANSWERS: list[tuple[int, str, str]] = [
    (500, "Internal Server Error", "text/plain"),
    (
        502,
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
        "</center></body></html>",
        "text/html",
    ),
    (503, json.dumps({"detail": "Service Unavailable"}), "application/json"),
]
# A 200 whose body is cut short: it passes a content-type check and fails only at decoding.
MALFORMED_BODY = '{"id": "7c1f0e4a-1b2c-4d5e-9f00-1234567'


@dataclass
class InjectedFault:
    label: str | None  # e.g. "slow", "error", "slow+malformed"; None when nothing was injected
    response: web.Response | None  # None: go on and answer normally (possibly after a delay)


def scripted_response(rule: FaultRule) -> web.Response:
    if rule.body is None:
        body, content_type = json.dumps({"detail": HTTPStatus(rule.status).phrase}), "application/json"
    elif isinstance(rule.body, str):
        body, content_type = rule.body, "text/plain"
    else:
        body, content_type = json.dumps(rule.body), "application/json"
    return web.Response(
        status=rule.status,
        text=body,
        content_type=rule.content_type or content_type,
        headers=rule.headers,
    )


async def inject(request: web.Request, state: SimulatorState) -> InjectedFault:
    rule = state.take_scripted_fault(request.method, request.path)
    if rule is not None:
        state.faults_injected["scripted"] += 1
        return InjectedFault("scripted", scripted_response(rule))

    cfg, rng = state.config, state.fault_rng
    slow, error, malformed = rng.random(), rng.random(), rng.random()
    labels = []
    if slow < cfg.slow_rate:
        labels.append("slow")
        await asyncio.sleep(cfg.slow_seconds)
    response = None
    if error < cfg.error_rate:
        labels.append("error")
        # Reuse the draw to pick the status: an extra draw would shift every later request's fate.
        pick = min(int(error / cfg.error_rate * len(ERROR_ANSWERS)), len(ERROR_ANSWERS) - 1)
        status, body, content_type = ERROR_ANSWERS[pick]
        response = web.Response(status=status, text=body, content_type=content_type)
    elif malformed < cfg.malformed_rate:
        labels.append("malformed")
        response = web.Response(status=200, text=MALFORMED_BODY, content_type="application/json")
    for label in labels:
        state.faults_injected[label] += 1
    return InjectedFault("+".join(labels) or None, response)
