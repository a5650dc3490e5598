"""The OpenAPI document as the service answers: FastAPI's, with what its generator cannot know put right, so
that a client generated from /openapi.json parses every answer it gets and knows every header it carries."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.datastructures import QueryParams

from ._answers import _ERRORS, POSITION_HEADER
from ._auth import key_needed, refused_to_read_keys
from ._paths import METRICS_PATH, galleries_named, is_open_path, is_write

_ERROR_REF = "#/components/schemas/ErrorResponse"
_VALIDATION_REF = "#/components/schemas/HTTPValidationError"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Both ways of sending the key; either one (a list of alternatives)
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "the API key (SIMSEARCH_API_KEY or SIMSEARCH_API_KEY_FILE)"},
    "BearerAuth": {"type": "http", "scheme": "bearer", "description": "the API key as `Authorization: Bearer <key>`"},
}
_KEY = [{"ApiKeyHeader": []}, {"BearerAuth": []}]

# The headers the service's answers carry (components.headers), each referenced from every response that carries
# it: X-Request-ID, X-Content-Type-Options and Vary from all (fix_openapi), Retry-After from each 429 and 503, and
# WWW-Authenticate from each 401 (fix_openapi); the position from the routes that send it (`responses=` of the
# route, with declares()). tests/app/test_contract.py holds the server to it: a header sent and not declared fails.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"required": True, "schema": {"type": "string"},
                     "description": "the request's id: the caller's X-Request-ID when it is 1-200 visible ASCII "
                                    "characters (no quotes or backslashes), else a new one (32 hex characters); an "
                                    "error body's `request_id`, and in the service's log lines of the request"},
    "X-Content-Type-Options": {"required": True, "schema": {"type": "string", "enum": ["nosniff"]},
                               "description": "nosniff: a browser takes the answer as its Content-Type says, never "
                                              "as a script or a page"},
    "Vary": {"required": False, "schema": {"type": "string"},
             "description": "Origin, from a service that answers the pages of other origins (SIMSEARCH_CORS_ORIGINS): "
                            "a cache keeps an answer for each origin"},
    "Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                    "description": "seconds to wait before trying again"},
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "enum": ["Bearer"]},
                         "description": "how to send the API key: `Authorization: Bearer <key>` (or X-API-Key)"},
    "Allow": {"required": True, "schema": {"type": "string", "examples": ["GET, HEAD"]},
              "description": "the methods the path takes (on a read-only service's writes: GET, HEAD)"},
    POSITION_HEADER: {"required": True,
                      "schema": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$", "examples": ["1042.7"]},
                      "description": "where the gallery stands after this write (on GET /index: the state the "
                                     "listing was read from): send it back as X-Simsearch-After to read from a state "
                                     "at least as new (read-your-writes on a read-only replica). Two whole numbers "
                                     "joined by a dot, each of which only grows: compare them as pairs of integers"},
}
_HEADER_REF = "#/components/headers/"
_ON_EVERY_ANSWER = ("X-Request-ID", "X-Content-Type-Options", "Vary")
_ON_STATUS = {"401": ("WWW-Authenticate",), "429": ("Retry-After",), "503": ("Retry-After",)}


def declares(*headers: str) -> dict[str, Any]:
    """A route's `responses` entry for a status whose answers carry `headers` (names in RESPONSE_HEADERS), e.g.
    `responses={201: declares(POSITION_HEADER)}`: merged by FastAPI into that status's response."""
    unknown = [h for h in headers if h not in RESPONSE_HEADERS]
    if unknown:
        raise ValueError(f"no header {unknown} in app/_openapi.py RESPONSE_HEADERS")
    return {"headers": {h: {"$ref": _HEADER_REF + h} for h in headers}}


def _error_422() -> dict[str, Any]:
    return {"description": "a parameter, id, label or metadata is invalid; a query parameter the route does not take",
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}


def _refers_to(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers_to(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, ref) for v in node)
    return False


def _read_only_405() -> dict[str, Any]:
    return {"description": "this service serves its index read-only (SIMSEARCH_READ_ONLY, `read_only`): writes go "
                           "to the service that owns the index",
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
            "headers": {"Allow": {"$ref": _HEADER_REF + "Allow"}}}


# Each reason a 403 can have (AuthMiddleware), as the operations that can answer it declare it.
_WRONG_KEY = "the API key sent is not one of the service's keys (`invalid_api_key`)"
_READ_ONLY_KEY = ("the key may only read (`KEY read` in the key file) and this request needs one that may write "
                  "(`key_scope`)")
_OTHER_GALLERY = ("the key may only use some galleries (`KEY galleries=...` in the key file) and this request is on "
                  "another (`key_scope`)")
_EVERY_GALLERY = ("the key may only use some galleries (`KEY galleries=...` in the key file) and /metrics names every "
                  "gallery and its size (`key_scope`)")


def forbidden_reasons(method: str, path: str, keyed: bool, key_for_reads: bool, scoped: bool) -> list[str]:
    """Why the service can answer this operation 403, in words naming each code (empty: it never does): a wrong
    key where the operation needs a key; with a key file (`scoped`), a read-only key on a write (or a backup), and a key
    limited to some galleries on any operation on a gallery (reads too: a scope holds whether or not the
    request needs a key)."""
    if not keyed or is_open_path(path):
        return []
    reasons = [_WRONG_KEY] if key_needed(method, path, key_for_reads) else []
    if scoped and refused_to_read_keys(method, path):
        reasons.append(_READ_ONLY_KEY)
    if scoped and galleries_named(path, QueryParams()) is not None:
        reasons.append(_OTHER_GALLERY)
    if scoped and key_for_reads and path == METRICS_PATH:
        reasons.append(_EVERY_GALLERY)
    return reasons


def _forbidden_403(reasons: list[str]) -> dict[str, Any]:
    return {"description": "; or ".join(reasons),
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}


def _headers_never_null(op: dict[str, Any]) -> None:
    """A header parameter FastAPI types `str | None` is declared a string: absent is how a header is not sent, and a
    client (schemathesis) reading null as a value sends the text `null`, which no header here takes."""
    for param in op.get("parameters", []):
        schema = param.get("schema", {})
        kinds = schema.get("anyOf", [])
        if param.get("in") == "header" and {"type": "null"} in kinds and len(kinds) == 2:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            param["schema"] = {**next(k for k in kinds if k != {"type": "null"}), **rest}


def fix_openapi(schema: dict[str, Any], keyed: bool, key_for_reads: bool, read_only: bool = False,
                scoped: bool | None = None) -> dict[str, Any]:
    """Put right, in place, what FastAPI's generator gets wrong about this service:
    - a header parameter is a string, never null (_headers_never_null);
    - every operation can answer 422 in the service's error shape (a query parameter it does not take, an
      invalid id), never FastAPI's `{"detail": [...]}`, which the service never sends;
    - the key: both ways of sending it as security schemes, required on the operations that need one
      (writes and GET /duplicates, every one with SIMSEARCH_REQUIRE_KEY_FOR_READS) when a key is set;
    - 403 declared on exactly the operations that can answer it, with the reasons each can have
      (forbidden_reasons; `scoped`: keys come from a key file, which can limit them; None: as `keyed`); a
      route that checks a key itself declares its own 403 (a description other than _ERRORS[403]'s), which
      is kept while the service has keys;
    - a read-only service (SIMSEARCH_READ_ONLY) answers every write 405, with Allow;
    - the headers the middleware puts on answers, declared on each response that carries them
      (RESPONSE_HEADERS), as components.headers."""
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            _headers_never_null(op)
            responses = op.setdefault("responses", {})
            if "422" not in responses or _refers_to(responses["422"], _VALIDATION_REF):
                responses["422"] = _error_422()
            if keyed and key_needed(method.upper(), path, key_for_reads):
                op["security"] = list(_KEY)
            own = responses.get("403", {}).get("description") not in (None, _ERRORS[403]["description"])
            reasons = forbidden_reasons(method.upper(), path, keyed, key_for_reads, keyed if scoped is None else scoped)
            if reasons and not own:
                responses["403"] = _forbidden_403(reasons)
            elif not keyed or not (reasons or own):
                responses.pop("403", None)
            if read_only and is_write(method.upper(), path):
                responses["405"] = _read_only_405()
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                for name in _ON_EVERY_ANSWER + _ON_STATUS.get(status, ()):
                    headers.setdefault(name, {"$ref": _HEADER_REF + name})
    components = schema.setdefault("components", {})
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and not _refers_to({k: v for k, v in schema.items() if k != "components"},
                                                f"#/components/schemas/{unused}") \
                and not _refers_to({k: v for k, v in schemas.items() if k != unused}, f"#/components/schemas/{unused}"):
            del schemas[unused]
    components["securitySchemes"] = dict(SECURITY_SCHEMES)
    components["headers"] = dict(RESPONSE_HEADERS)
    return schema


def install_openapi(app: FastAPI, keyed: bool, key_for_reads: bool, read_only: bool = False,
                    scoped: bool | None = None) -> None:
    """app.openapi() (and /openapi.json, /docs) answers the corrected document, built once. `scoped`: whether
    the keys come from a key file (whose keys may be limited); None: read from app.state.settings when the
    document is first asked for, else as `keyed`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            settings = getattr(app.state, "settings", None)
            limited = scoped if scoped is not None or settings is None else settings.api_key_file is not None
            app.openapi_schema = fix_openapi(FastAPI.openapi(app), keyed, key_for_reads, read_only, limited)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
