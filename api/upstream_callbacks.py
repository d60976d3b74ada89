"""Luma's callbacks and the files Luma fetches: the two routes the upstream calls, not callers.

`POST /api/upstream/callback/{token}`: an official create named this URL (worker/refresh.py). The
token is the only credential (the callbacks are unsigned); the body is never read as the state:
the call only enqueues an immediate read of that generation from the API, and answers at once so
that Luma does not retry.

`GET /files/{id}`: an image the gateway keeps itself (shared/files.py), public like Luma's own CDN.
"""

from __future__ import annotations

import re

from aiohttp import web

from api.appkeys import ARQ, FILES, REDIS
from api.errors import NotFound
from api.respond import json_response
from shared import keys
from shared.queue import REFRESH_JOB

TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


async def upstream_callback(request: web.Request) -> web.Response:
    """POST /api/upstream/callback/{token}: Luma says a generation changed; read it now."""
    token = request.match_info["token"]
    gen_id = await request.app[REDIS].get(keys.upstream_callback(token)) if TOKEN.fullmatch(token) else None
    if gen_id is None:
        raise NotFound("no such callback")
    await request.read()  # drained, not trusted: it is unsigned
    await request.app[ARQ].enqueue_job(REFRESH_JOB, str(gen_id), _job_id=keys.refresh_job_id(str(gen_id)))
    return json_response({"message": "ok"})


async def serve_file(request: web.Request) -> web.Response:
    """GET /files/{id}: one of the images the gateway keeps, for Luma (and anyone) to fetch."""
    kept = await request.app[FILES].get(request.match_info["id"])
    if kept is None:
        raise NotFound("no such file")
    data, content_type = kept
    return web.Response(
        body=data,
        headers={
            "Content-Type": content_type,
            # Ids are never reused: a file never changes.
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/upstream/callback/{token}", upstream_callback)
    app.router.add_get("/files/{id}", serve_file)
