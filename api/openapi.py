"""GET /openapi.json: the OpenAPI 3.1 document of every route, built from the pydantic models.

The schemas come from the models that validate requests (shared/models.py, the route modules'
own) and from those that describe answers (api/answers.py), through pydantic's own JSON Schema
(OpenAPI 3.1's dialect is JSON Schema 2020-12, which is what pydantic emits, so no converter
sits in between). What pydantic cannot know is said here, once per route, in OPERATIONS: method
and path, who may call it, its body and query models, and which statuses it answers with what.

Why a thin table of our own rather than aiohttp-pydantic or openapi-pydantic: the handlers
already parse with pydantic (api/parse.py) and are plain aiohttp functions; aiohttp-pydantic
would rewrite every handler into its class views, and openapi-pydantic only types the document
we would still have to fill in. A table test (tests/api/test_openapi.py) checks that it names
exactly the routes create_app registers, so a route cannot be added without its description.

Adding a route: register it (api/app.py or its module's add_routes), then add one Operation here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api import answers
from api.auth import KEY_QUERY_PARAMETER, SECRET_KEY_HEADER
from api.extend import ExtendRequest
from api.relay import RelayCreate, RelayExtend, RelayUpload
from shared.events import EventsQuery
from shared.models import (
    AccountUpdate,
    BatchRequest,
    CreateRequest,
    HolderUpdate,
    ListQuery,
    RemoveAccountQuery,
)
from shared.settings import AccountConfig, Settings

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
REF = "#/components/schemas/{model}"


class Auth(Enum):
    NONE = "none"
    HOLDER = "holder"  # a SECRET_KEY (anyone, when none is set)
    HOLDER_OR_ADMIN = "holder_or_admin"
    ADMIN = "admin"
    STREAM = "stream"  # a SECRET_KEY, as the header or ?key= (EventSource sends no headers)
    BEARER = "bearer"  # the /luma/* relay routes: a SECRET_KEY as a Bearer token
    METRICS = "metrics"  # METRICS_KEY as a Bearer token, when it is set


@dataclass(frozen=True)
class Media:
    """An answer that is not JSON: its content type and, optionally, its schema."""

    content_type: str
    schema: Mapping[str, Any] = field(default_factory=dict)


Answer = type[BaseModel] | Media | None


DEFAULT_ERROR = answers.Error


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    auth: Auth
    # Status -> what the answer holds; statuses of errors take the error model (`error`).
    answers: Mapping[int, Answer]
    errors: Sequence[int] = ()
    body: type[BaseModel] | None = None
    body_type: str = JSON
    body_required: bool = True
    query: type[BaseModel] | None = None
    parameters: Sequence[Mapping[str, Any]] = ()
    error: type[BaseModel] = DEFAULT_ERROR
    description: str = ""


# Statuses a route may give whatever it does: Redis unreachable (503).
REDIS = (503,)
# A JSON body: malformed (400), too slow (408), too large (413), not JSON (415).
JSON_BODY = (400, 408, 413, 415)
HOLDER = (401, *REDIS)
ADMIN = (401, 404, *REDIS)  # 404: the admin API is off (no ADMIN_KEY)
CREATE = (*JSON_BODY, 401, 422, 429, *REDIS)  # 422: Idempotency-Key reused; 429: queue or rate full

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retried create with the same key (and body) is made once",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
}


def path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


GEN_ID = path_parameter("id", "the generation's id (ours, as the create answered)")
SSE = Media("text/event-stream", {"type": "string"})
HTML = Media("text/html", {"type": "string"})
METRICS_TEXT = Media("text/plain", {"type": "string"})
ANY_ASSET = Media("*/*", {"type": "string", "format": "binary"})
IMAGE = Media("image/*", {"type": "string", "format": "binary"})

OPERATIONS: tuple[Operation, ...] = (
    # --- the seed's routes and their neighbours ---
    Operation(
        "get",
        "/api/generations",
        "The caller's generations, newest first",
        "generations",
        Auth.HOLDER,
        {200: answers.GenerationList},
        (400, *HOLDER),
        query=ListQuery,
    ),
    Operation(
        "get",
        "/api/generations/usage",
        "The pool's usage (the admin also sees every account)",
        "generations",
        Auth.HOLDER_OR_ADMIN,
        {200: answers.UsageAnswer},
        HOLDER,
    ),
    Operation(
        "get",
        "/api/generations/events",
        "Server-Sent Events of the caller's generations",
        "generations",
        Auth.STREAM,
        {200: SSE},
        (400, *HOLDER),
        parameters=(
            {
                "name": "last_event_id",
                "in": "query",
                "required": False,
                "description": "resume after this event id (or the Last-Event-ID header)",
                "schema": {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
            },
        ),
        description="A stream: it never ends by itself. `: heartbeat` comments keep it open.",
    ),
    Operation(
        "post",
        "/api/generations/create",
        "Queue one generation; answers at once",
        "generations",
        Auth.HOLDER,
        {200: answers.Created},
        CREATE,
        body=CreateRequest,
        parameters=(IDEMPOTENCY_KEY,),
    ),
    Operation(
        "post",
        "/api/generations/batch",
        "Queue many generations, all or nothing",
        "generations",
        Auth.HOLDER,
        {200: answers.BatchCreated},
        CREATE,
        body=BatchRequest,
        parameters=(IDEMPOTENCY_KEY,),
    ),
    Operation(
        "post",
        "/api/generations/upload",
        "Put an image on an account; answers once its bytes are there",
        "generations",
        Auth.HOLDER,
        {200: answers.UploadAnswer},
        # 429: uploads in flight are capped; 502: the worker failed; 504: no worker in time
        (*JSON_BODY, 401, 429, 502, *REDIS, 504),
        body=answers.UploadForm,
        body_type="multipart/form-data",
    ),
    Operation(
        "get",
        "/api/generations/{id}",
        "One of the caller's generations",
        "generations",
        Auth.HOLDER,
        {200: answers.GenerationAnswer},
        (401, 404, *REDIS),
        parameters=(GEN_ID,),
    ),
    Operation(
        "get",
        "/api/generations/{id}/events",
        "Every transition of one generation, oldest first",
        "generations",
        Auth.HOLDER_OR_ADMIN,
        {200: answers.GenerationEventList},
        (401, 404, *REDIS),
        parameters=(GEN_ID,),
    ),
    Operation(
        "post",
        "/api/generations/{id}/cancel",
        "Take back a generation that has not reached Luma yet",
        "generations",
        Auth.HOLDER,
        {200: answers.GenerationAnswer},
        (401, 404, 409, *REDIS),
        parameters=(GEN_ID,),
    ),
    Operation(
        "post",
        "/api/generations/{id}/extend",
        "Continue a completed generation",
        "generations",
        Auth.HOLDER,
        {200: answers.Created},
        (*CREATE, 404, 409),
        body=ExtendRequest,
        body_required=False,
        parameters=(GEN_ID,),
    ),
    # --- webhooks ---
    Operation(
        "get",
        "/api/generations/{id}/deliveries",
        "Each event's webhook with every attempt",
        "webhooks",
        Auth.HOLDER_OR_ADMIN,
        {200: answers.DeliveryList},
        (401, 404, *REDIS),
        parameters=(GEN_ID,),
    ),
    Operation(
        "get",
        "/api/webhooks/secret",
        "The secret the caller's webhooks are signed with",
        "webhooks",
        Auth.HOLDER,
        {200: answers.SecretAnswer},
        HOLDER,
    ),
    Operation(
        "post",
        "/api/webhooks/secret/rotate",
        "A new signing secret",
        "webhooks",
        Auth.HOLDER,
        {200: answers.SecretAnswer},
        HOLDER,
    ),
    # --- admin ---
    Operation(
        "post",
        "/api/admin/generations/{id}/redeliver",
        "Send every webhook of a generation again, in order",
        "admin",
        Auth.ADMIN,
        {202: answers.Redelivered},
        (*ADMIN, 409),
        parameters=(GEN_ID,),
    ),
    Operation(
        "get",
        "/api/admin/accounts",
        "Every account: state, in flight, limit, available",
        "admin",
        Auth.ADMIN,
        {200: answers.AccountList},
        ADMIN,
    ),
    Operation(
        "post",
        "/api/admin/accounts",
        "Put a new account in the pool",
        "admin",
        Auth.ADMIN,
        {201: answers.AccountAnswer},
        (*JSON_BODY, *ADMIN, 409),
        body=AccountConfig,
    ),
    Operation(
        "patch",
        "/api/admin/accounts/{name}",
        "Enable, disable, a new cookie or key, new limits",
        "admin",
        Auth.ADMIN,
        {200: answers.AccountAnswer},
        (*JSON_BODY, *ADMIN),
        body=AccountUpdate,
        parameters=(path_parameter("name", "the account's name"),),
    ),
    Operation(
        "delete",
        "/api/admin/accounts/{name}",
        "Take an account out of the pool (409 while it has generations in flight, unless force)",
        "admin",
        Auth.ADMIN,
        {200: answers.RemovedAccountAnswer},
        (400, *ADMIN, 409),
        query=RemoveAccountQuery,
        parameters=(path_parameter("name", "the account's name"),),
    ),
    Operation(
        "get",
        "/api/admin/events",
        "The newest entries of the whole event log",
        "admin",
        Auth.ADMIN,
        {200: answers.AdminEventList},
        (400, *ADMIN),
        query=EventsQuery,
    ),
    Operation(
        "get",
        "/api/admin/holders",
        "Each key holder's queue, recent creates and limits",
        "admin",
        Auth.ADMIN,
        {200: answers.HolderList},
        ADMIN,
    ),
    Operation(
        "patch",
        "/api/admin/holders/{owner}",
        "An operator's own limits for one key holder",
        "admin",
        Auth.ADMIN,
        {200: answers.HolderAnswer},
        (*JSON_BODY, *ADMIN),
        body=HolderUpdate,
        parameters=(path_parameter("owner", "the key holder's id, as GET /api/admin/holders lists it"),),
    ),
    # --- operating it ---
    Operation(
        "get",
        "/healthz",
        "Liveness: this api answers and reaches Redis",
        "operations",
        Auth.NONE,
        {200: answers.Health},
        REDIS,
    ),
    Operation(
        "get",
        "/readyz",
        "Readiness: Redis answers and an account can take work",
        "operations",
        Auth.NONE,
        {200: answers.Readiness, 503: answers.Readiness},
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        "operations",
        Auth.METRICS,
        {200: METRICS_TEXT},
        (401, *REDIS),
    ),
    Operation(
        "get",
        "/openapi.json",
        "This document",
        "operations",
        Auth.NONE,
        {200: Media(JSON, {"type": "object"})},
    ),
    Operation("get", "/docs", "The interactive API docs (Swagger UI)", "operations", Auth.NONE, {200: HTML}),
    Operation(
        "get",
        "/docs/{name}",
        "An asset of the docs page",
        "operations",
        Auth.NONE,
        {200: ANY_ASSET},
        (404,),
        parameters=(path_parameter("name", "the asset's file name"),),
    ),
    Operation("get", "/", "The web dashboard", "dashboard", Auth.NONE, {200: HTML}),
    Operation(
        "get",
        "/dashboard/{name}",
        "A script, style or image of the dashboard",
        "dashboard",
        Auth.NONE,
        {200: ANY_ASSET},
        (404,),
        parameters=(path_parameter("name", "the asset's file name"),),
    ),
    # --- what Luma calls ---
    Operation(
        "post",
        "/api/upstream/callback/{token}",
        "Luma says an official generation changed: it is read again now",
        "upstream",
        Auth.NONE,
        {200: answers.Acknowledged},
        (404, *REDIS),
        parameters=(path_parameter("token", "the per-create token the callback URL carries"),),
        description="The token is the credential; the body is drained, never trusted.",
    ),
    Operation(
        "get",
        "/files/{id}",
        "An image the gateway keeps, public like Luma's CDN",
        "upstream",
        Auth.NONE,
        {200: IMAGE},
        (404, *REDIS),
        parameters=(path_parameter("id", "the file's id"),),
    ),
    # --- the Go relay's /luma/* routes (answers and errors in its shapes) ---
    *(
        Operation(
            "post",
            path,
            "Queue one generation (the relay's create)",
            "relay",
            Auth.BEARER,
            {201: answers.Generation},
            (*JSON_BODY, 401, 429, *REDIS),
            body=RelayCreate,
            error=answers.RelayError,
        )
        for path in ("/luma/generations", "/luma/generations/")
    ),
    Operation(
        "post",
        "/luma/generations/file_upload",
        "Put an image (an http(s) URL or a data URI) on an account",
        "relay",
        Auth.BEARER,
        {200: answers.UploadSlot},
        (*JSON_BODY, 401, 429, 502, *REDIS, 504),
        body=RelayUpload,
        error=answers.RelayError,
    ),
    Operation(
        "post",
        "/luma/generations/{id}/extend",
        "Continue a completed generation",
        "relay",
        Auth.BEARER,
        {201: answers.Generation},
        (*JSON_BODY, 401, 404, 409, 429, *REDIS),
        body=RelayExtend,
        parameters=(GEN_ID,),
        error=answers.RelayError,
    ),
    Operation(
        "get",
        "/luma/generations/{id}",
        "One generation, as the web API shapes it",
        "relay",
        Auth.BEARER,
        {200: answers.Generation},
        (401, 404, *REDIS),
        parameters=(GEN_ID,),
        error=answers.RelayError,
    ),
    Operation(
        "get",
        "/luma/generations/{id}/download_video_url",
        "The video's link, watermark-free where there is one",
        "relay",
        Auth.BEARER,
        {200: answers.DownloadLink},
        (400, 401, 404, *REDIS),
        parameters=(GEN_ID,),
        error=answers.RelayError,
    ),
    Operation(
        "get",
        "/luma/subscription/usage",
        "The pool's usage in the web API's shape",
        "relay",
        Auth.BEARER,
        {200: answers.Usage},
        (401, *REDIS),
        error=answers.RelayError,
    ),
    Operation(
        "get",
        "/luma/users/me",
        "Who the token is (the key holder, never the key)",
        "relay",
        Auth.BEARER,
        {200: answers.RelayUser},
        (401,),
        error=answers.RelayError,
    ),
)

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "SecretKey": {
        "type": "apiKey",
        "in": "header",
        "name": SECRET_KEY_HEADER,
        "description": "One of the api's SECRET_KEYs (with none set, the api is open)",
    },
    "AdminKey": {
        "type": "apiKey",
        "in": "header",
        "name": SECRET_KEY_HEADER,
        "description": "The ADMIN_KEY, in the same header",
    },
    "KeyInQuery": {
        "type": "apiKey",
        "in": "query",
        "name": KEY_QUERY_PARAMETER,
        "description": "A SECRET_KEY as ?key=, for EventSource (this route only)",
    },
    "RelayBearer": {"type": "http", "scheme": "bearer", "description": "A SECRET_KEY as a Bearer token"},
    "MetricsKey": {"type": "http", "scheme": "bearer", "description": "METRICS_KEY, when it is set"},
}

_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.NONE: [],
    Auth.HOLDER: [{"SecretKey": []}],
    Auth.HOLDER_OR_ADMIN: [{"SecretKey": []}, {"AdminKey": []}],
    Auth.ADMIN: [{"AdminKey": []}],
    Auth.STREAM: [{"SecretKey": []}, {"KeyInQuery": []}],
    Auth.BEARER: [{"RelayBearer": []}],
    Auth.METRICS: [{"MetricsKey": []}, {}],
}

# Bounds that are settings rather than constants: (model, field) -> the schema keywords they add.
SETTING_BOUNDS: dict[tuple[str, str], Callable[[Settings], dict[str, Any]]] = {
    ("ListQuery", "limit"): lambda settings: {"maximum": settings.list_max_limit},
    ("BatchRequest", "items"): lambda settings: {"maxItems": settings.batch_max_items},
}


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[type[BaseModel], JsonSchemaMode] = {}
    for operation in OPERATIONS:
        for model in (operation.body, operation.query):
            if model is not None:
                seen.setdefault(model, "validation")
        for answer in operation.answers.values():
            if isinstance(answer, type):
                seen.setdefault(answer, "serialization")
        seen.setdefault(operation.error, "serialization")
    return list(seen.items())


def _without_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An optional field's `anyOf [X, null]` as X: a query parameter is absent, never null."""
    options = schema.get("anyOf")
    if options:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
            return {**kept[0], **rest}
    return {key: value for key, value in schema.items() if not (key == "default" and value is None)}


def _query_parameters(schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    parameters = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        param_schema = _without_null(prop)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": param_schema,
        }
        if param_schema.get("type") == "array":
            # `state=pending,failed`: the comma form (the parameter given twice works too).
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    return parameters


def _content(answer: Answer, refs: Mapping[type[BaseModel], Mapping[str, Any]]) -> dict[str, Any]:
    if answer is None:
        return {}
    if isinstance(answer, Media):
        return {answer.content_type: {"schema": dict(answer.schema)}}
    return {JSON: {"schema": dict(refs[answer])}}


def _description(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route, with this process's setting-bound limits."""
    models = _models()
    key_map, definitions = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    for (model_name, field_name), bound in SETTING_BOUNDS.items():
        prop = schemas.get(model_name, {}).get("properties", {}).get(field_name)
        if prop is not None:
            prop.update(bound(settings))
    refs = {model: key_map[(model, mode)] for model, mode in models}

    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, answer in operation.answers.items():
            responses[str(status)] = {"description": _description(status), "content": _content(answer, refs)}
        for status in operation.errors:
            responses.setdefault(
                str(status),
                {"description": _description(status), "content": _content(operation.error, refs)},
            )
        spec: dict[str, Any] = {
            "operationId": _operation_id(operation),
            "summary": operation.summary,
            "tags": [operation.tag],
            "security": _SECURITY[operation.auth],
            "responses": dict(sorted(responses.items())),
        }
        if operation.description:
            spec["description"] = operation.description
        parameters = [dict(parameter) for parameter in operation.parameters]
        if operation.query is not None:
            query_schema = schemas[refs[operation.query]["$ref"].rsplit("/", 1)[1]]
            parameters.extend(_query_parameters(query_schema))
        if parameters:
            spec["parameters"] = parameters
        if operation.body is not None:
            spec["requestBody"] = {
                "required": operation.body_required,
                "content": {operation.body_type: {"schema": dict(refs[operation.body])}},
            }
        paths.setdefault(operation.path, {})[operation.method] = spec

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "luma-queue",
            "version": "0.1.0",
            "description": (
                "A self-hosted gateway for Luma Dream Machine video generation: the seed proxy's "
                "/api/generations routes behind a queue on Redis and a pool of Luma accounts. Every "
                'error is JSON `{"message", "code"}` (the /luma/* routes: `{"detail": {"reason", "code"}}`).'
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in dict.fromkeys(operation.tag for operation in OPERATIONS)],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _operation_id(operation: Operation) -> str:
    words = [
        part.strip("{}").replace("-", "_").replace(".", "_")
        for part in operation.path.split("/")
        if part and part != "api"
    ]
    trailing = "_slash" if operation.path.endswith("/") and operation.path != "/" else ""
    return "_".join([operation.method, *words]) + trailing if words else operation.method + "_root"
