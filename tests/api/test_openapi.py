"""GET /openapi.json and /docs: a valid OpenAPI 3.1 document of exactly the routes the api has,
and a docs page whose every asset the api serves itself."""

from __future__ import annotations

import re

from aiohttp import web
from openapi_spec_validator import validate

from api.app import create_app
from api.appkeys import SETTINGS
from api.openapi import OPERATIONS, build_document
from shared.settings import Settings
from tests.api.conftest import ApiClient, MakeApi

_REFERENCE = re.compile(r"""(?:src|href)="([^"]+)\"""")


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route create_app registers; HEAD comes with each GET."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_the_route_table_describes_exactly_the_routes_the_app_serves() -> None:
    """A route added without its Operation (or an Operation whose route went away) fails here."""
    app = create_app(Settings(_env_file=None))
    described = {(operation.method, operation.path) for operation in OPERATIONS}
    assert len(described) == len(OPERATIONS), "an operation is described twice"
    assert described == registered_routes(app)


async def test_the_document_is_valid_openapi_3_1_and_served_without_a_key(api: ApiClient) -> None:
    """The served document validates as OpenAPI 3.1, and it is the one build_document makes."""
    response = await api.get("/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    settings = api.server.app[SETTINGS]
    assert document == build_document(settings)


async def test_bounds_that_are_settings_appear_in_the_document(make_api: MakeApi) -> None:
    """LIST_MAX_LIMIT and BATCH_MAX_ITEMS are the limits the document states."""
    api = await make_api(list_max_limit=37, batch_max_items=12)
    document = await (await api.get("/openapi.json")).json()
    [limit] = [
        parameter
        for parameter in document["paths"]["/api/generations"]["get"]["parameters"]
        if parameter["name"] == "limit"
    ]
    assert limit["schema"]["maximum"] == 37 and limit["schema"]["minimum"] == 1
    batch = document["components"]["schemas"]["BatchRequest"]
    assert batch["properties"]["items"]["maxItems"] == 12


async def test_routes_state_their_keys_their_errors_and_their_bodies(api: ApiClient) -> None:
    """Security schemes per route; the error shape on every 4xx/5xx; bodies from the request models."""
    document = await (await api.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["SecretKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Secret-Key",
        "description": schemes["SecretKey"]["description"],
    }
    create = document["paths"]["/api/generations/create"]["post"]
    assert create["security"] == [{"SecretKey": []}]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRequest"
    }
    prompt = document["components"]["schemas"]["CreateRequest"]["properties"]["prompt"]
    assert (prompt["minLength"], prompt["maxLength"]) == (1, 5000)
    for status in ("400", "401", "413", "415", "429", "503"):
        error = create["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}, status
    assert set(document["components"]["schemas"]["Error"]["required"]) == {"message", "code"}
    assert document["paths"]["/api/admin/accounts"]["get"]["security"] == [{"AdminKey": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    relay = document["paths"]["/luma/generations"]["post"]
    assert relay["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RelayError"
    }


async def test_the_docs_page_and_every_asset_it_loads_come_from_the_api(api: ApiClient) -> None:
    """Swagger UI renders from the api alone: the page, its scripts and styles, and the document."""
    page = await api.get("/docs")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    references = _REFERENCE.findall(html)
    assert "docs/swagger-ui-bundle.js" in references and "docs/init.js" in references
    for reference in references:
        assert not reference.startswith(("http:", "https:", "//")), f"{reference} is not ours"
        asset = await api.get(f"/{reference}")
        assert asset.status == 200, reference
        assert len(await asset.read()) > 0, reference
    bundle = await api.get("/docs/swagger-ui-bundle.js")
    assert bundle.headers["Content-Type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in await bundle.text()
    init = await (await api.get("/docs/init.js")).text()
    assert 'url: "openapi.json"' in init


async def test_the_docs_serve_no_other_file(api: ApiClient) -> None:
    """Only the named files of the bundle are served: anything else is the JSON 404."""
    for name in ("index.html", "..%2Fpyproject.toml", "swagger-ui.js.map"):
        response = await api.get(f"/docs/{name}")
        assert response.status == 404, name
        assert (await response.json())["code"] == "not_found"
