"""GET / and /dashboard/{name}: the dashboard's page and assets, served from the package."""

from __future__ import annotations

import re

from api.dashboard import ASSETS, STATIC_DIR
from tests.api.conftest import ApiClient, MakeApi

# What the page loads from its own markup, and what each module imports.
_REFERENCE = re.compile(r"""(?:src|href)="(/dashboard/[^"]+)\"""")
_IMPORT = re.compile(r"""from "\./([^"]+)";""")
# An address with a host, absolute or scheme-relative: what a CDN would look like. The SVG
# namespace is only a name, never fetched.
_EXTERNAL = re.compile(r"""(?:https?:|["'(=\s])//([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)""")
_NAMESPACES = {"www.w3.org"}


async def test_the_page_is_served_without_a_key_with_a_policy_that_runs_only_our_scripts(
    api: ApiClient,
) -> None:
    """The page asks for the key itself, so it loads without one, under a strict CSP."""
    response = await api.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert (
        "script-src 'self'" in policy
        and "'unsafe-inline'" not in policy
        and "frame-ancestors 'none'" in policy
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    assert '<script type="module" src="/dashboard/app.js">' in await response.text()


async def test_every_file_the_page_and_its_modules_load_is_served_with_its_type(api: ApiClient) -> None:
    """Markup references and module imports all resolve, as JavaScript, CSS or images."""
    page = (STATIC_DIR / "index.html").read_text()
    wanted = set(_REFERENCE.findall(page))
    for script in STATIC_DIR.glob("*.js"):
        wanted |= {f"/dashboard/{name}" for name in _IMPORT.findall(script.read_text())}
    assert "/dashboard/app.js" in wanted and "/dashboard/gallery.js" in wanted
    types = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }
    for path in sorted(wanted):
        response = await api.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Type"] == types[path[path.rindex(".") :]], path


async def test_nothing_is_loaded_from_another_origin() -> None:
    """No CDN: every asset ships in the package, and no file names a host to fetch from."""
    for path in STATIC_DIR.iterdir():
        found = set(_EXTERNAL.findall(path.read_text())) - _NAMESPACES
        assert not found, f"{path.name} refers to {sorted(found)}"


async def test_an_unknown_or_sneaky_asset_name_is_a_json_404(api: ApiClient) -> None:
    for path in [
        "/dashboard/nope.js",
        "/dashboard/..%2Fdashboard.py",
        "/dashboard/index.html",
        "/dashboard/",
    ]:
        response = await api.get(path)
        assert response.status == 404, path
        assert (await response.json())["code"] == "not_found", path


async def test_an_asset_is_revalidated_with_its_etag(api: ApiClient) -> None:
    """no-cache means ask again, and an unchanged file answers 304 with no body."""
    first = await api.get("/dashboard/app.js")
    etag = first.headers["ETag"]
    again = await api.get("/dashboard/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""


async def test_the_api_still_needs_its_key_next_to_the_page(make_api: MakeApi) -> None:
    """Serving the page opens nothing else: the API behind it still refuses a caller without a key."""
    api = await make_api()
    assert (await api.get("/")).status == 200
    assert (await api.get("/api/generations")).status == 401
    assert set(ASSETS) >= {"app.js", "app.css", "icon.svg"}
