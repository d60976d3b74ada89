"""The yardstick of bench/http_throughput.py: aiohttp itself, with nothing of the product behind it.

    python bench/support/bare_app.py --port 8123 --responses responses.json [--loop auto]

Three handlers on the product's paths: create parses the JSON body and answers one generation with
a fresh uuid, detail answers a fixed generation, the list answers ten. `responses.json` holds the
product's own answers (read from the api just before), so both send bodies of the same shape and
size. No auth, no Redis, no validation: what is left is the HTTP server, routing and JSON.

`--loop auto` runs on uvloop when it is installed, as the product's api is meant to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

RESPONSES: web.AppKey[dict[str, Any]] = web.AppKey("responses", dict)


async def create(request: web.Request) -> web.Response:
    body = await request.json()
    generation = dict(request.app[RESPONSES]["create"]["data"][0])
    generation.update(
        id=str(uuid.uuid4()),
        prompt=body["prompt"],
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    return web.json_response({"message": "Success", "data": [generation]})


async def detail(request: web.Request) -> web.Response:
    return web.json_response(request.app[RESPONSES]["detail"])


async def listing(request: web.Request) -> web.Response:
    return web.json_response(request.app[RESPONSES]["list"])


def create_app(responses: dict[str, Any]) -> web.Application:
    app = web.Application()
    app[RESPONSES] = responses
    app.router.add_get("/api/generations", listing)
    app.router.add_post("/api/generations/create", create)
    app.router.add_get("/api/generations/{id}", detail)
    return app


def loop_factory(choice: str) -> Any:
    """The event loop to run on: uvloop's when asked for or (`auto`) when installed."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", type=Path, required=True)
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    args = parser.parse_args()
    responses = json.loads(args.responses.read_text())
    loop = loop_factory(args.loop)()
    asyncio.set_event_loop(loop)
    web.run_app(create_app(responses), host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
