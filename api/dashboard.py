"""The web dashboard: one page and its assets, shipped in the package (api/static/), no build step.

The page is a client of the public API like any other: it calls /api/... from the browser with
the key the person signed in with. This module only serves its files, each with headers that let
the page run our own scripts and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"

# What each kind of asset is served as; a file of any other kind is not served at all.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Only our own scripts and styles run; videos and images come from whatever CDN an account's
# generations are on (Luma's, or the simulator's on another port), so media may be any http(s) URL.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "media-src 'self' blob: http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page's address never travels to the media CDNs it loads from.
    "Referrer-Policy": "no-referrer",
    # Revalidated each time (ETag / Last-Modified answer 304), so an upgrade is seen at once.
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, Path]:
    """The files we serve, by name: read once, so a request can only ever name one of these."""
    return {
        path.name: path
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES and path.name != INDEX
    }


ASSETS = _assets()


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(path, headers={**HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]})


async def index(request: web.Request) -> web.FileResponse:
    """GET /: the dashboard's page (no key needed: the page asks for one)."""
    return _file(STATIC_DIR / INDEX)


async def asset(request: web.Request) -> web.FileResponse:
    """GET /dashboard/{name}: one of the page's scripts, styles or images."""
    name = request.match_info["name"]
    path = ASSETS.get(name)
    if path is None:
        raise NotFound(f"no dashboard file {name[:100]!r}")
    return _file(path)
