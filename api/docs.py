"""GET /openapi.json and GET /docs: the API described, and Swagger UI to read and try it.

Swagger UI's files come from the `swagger-ui-bundle-v2` package (the `swagger_ui_bundle` module,
Swagger UI 5: the first to read OpenAPI 3.1) and are served by the api itself, never from a CDN,
because a gateway often runs where there is no internet. The page and its start-up script are
ours, so the page runs under a Content-Security-Policy that allows only this origin's scripts.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from api.appkeys import SETTINGS
from api.errors import NotFound
from api.openapi import SETTING_BOUNDS, build_document
from shared.settings import Settings

SWAGGER_DIR = Path(str(swagger_ui_path))
# The files of the bundle the page needs; nothing else in that directory is served.
SWAGGER_FILES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

# Relative links, so the page also works behind a proxy that serves the api under a prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>luma-queue API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""

INIT_SCRIPT = """window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
  });
});
"""

# Swagger UI sets inline style attributes and shows data: images; scripts are only ours.
HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# Encoded documents by the setting-bound limits they state: built once per process, not per app
# or request (the routes and the models do not change while it runs).
_DOCUMENTS: dict[str, bytes] = {}


def document(settings: Settings) -> bytes:
    """The OpenAPI document for these settings, as JSON bytes."""
    key = json.dumps([bound(settings) for bound in SETTING_BOUNDS.values()], sort_keys=True)
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = orjson.dumps(build_document(settings))
    return _DOCUMENTS[key]


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: served without a key, as is usual."""
    return web.Response(body=document(request.app[SETTINGS]), content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    """GET /docs: Swagger UI over /openapi.json."""
    return web.Response(text=PAGE, content_type="text/html", headers=HEADERS)


async def docs_asset(request: web.Request) -> web.StreamResponse:
    """GET /docs/{name}: the page's start-up script, or one of Swagger UI's files."""
    name = request.match_info["name"]
    if name == "init.js":
        return web.Response(text=INIT_SCRIPT, content_type="text/javascript", headers=HEADERS)
    content_type = SWAGGER_FILES.get(name)
    if content_type is None:
        raise NotFound(f"no docs file {name[:100]!r}")
    return web.FileResponse(SWAGGER_DIR / name, headers={**HEADERS, "Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs/{name}", docs_asset)
