"""The yardstick of bench/http_throughput.py: aiohttp itself, with nothing of the product behind it.

    python bench/support/bare_app.py --port 8123 --responses responses.json [--loop auto]

Three handlers on the product's paths: create parses the JSON body and answers one generation with
a fresh uuid, detail answers a fixed generation, the list answers ten. `responses.json` holds the
product's own answers (read from the api just before), so both send bodies of the same shape and
size. No auth, no Redis, no validation: what is left is the HTTP server, routing and JSON.

`--loop auto` runs on uvloop when it is installed, as the product's api is meant to.

`--redis URL` makes it the second yardstick: the same handlers, each first making the Redis round
trips the product's floor needs (create: one command; detail: one GET of a stored record; list: a
ZREVRANGE and an MGET of ten), so what the product costs beyond its round trips shows.
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
REDIS: web.AppKey[Any] = web.AppKey("redis", object)
RECORD_KEY = "bench:bare:record"
INDEX_KEY = "bench:bare:index"


async def create(request: web.Request) -> web.Response:
    body = await request.json()
    if REDIS in request.app:
        await request.app[REDIS].set(RECORD_KEY + ":new", body["prompt"])
    generation = dict(request.app[RESPONSES]["create"]["data"][0])
    generation.update(
        id=str(uuid.uuid4()),
        prompt=body["prompt"],
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    return web.json_response({"message": "Success", "data": [generation]})


async def detail(request: web.Request) -> web.Response:
    if REDIS in request.app:
        await request.app[REDIS].get(RECORD_KEY + ":0")
    return web.json_response(request.app[RESPONSES]["detail"])


async def listing(request: web.Request) -> web.Response:
    if REDIS in request.app:
        ids = await request.app[REDIS].zrevrange(INDEX_KEY, 0, 9)
        await request.app[REDIS].mget([RECORD_KEY + ":" + gen_id for gen_id in ids])
    return web.json_response(request.app[RESPONSES]["list"])


async def _redis(app: web.Application, url: str) -> Any:
    from redis.asyncio import Redis

    client = Redis.from_url(url, decode_responses=True)
    record = json.dumps(app[RESPONSES]["detail"]["data"])
    await client.mset({f"{RECORD_KEY}:{n}": record for n in range(10)})
    await client.zadd(INDEX_KEY, {str(n): n for n in range(10)})
    return client


def create_app(responses: dict[str, Any], redis_url: str | None = None) -> web.Application:
    app = web.Application()
    app[RESPONSES] = responses
    if redis_url:

        async def redis_client(app: web.Application) -> Any:
            app[REDIS] = await _redis(app, redis_url)
            yield
            await app[REDIS].aclose()

        app.cleanup_ctx.append(redis_client)
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
    parser.add_argument("--redis", help="make the product's round trips to this Redis too")
    args = parser.parse_args()
    responses = json.loads(args.responses.read_text())
    loop = loop_factory(args.loop)()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(responses, args.redis),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
