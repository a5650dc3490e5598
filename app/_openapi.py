"""The OpenAPI document as the service answers: FastAPI's, with what its generator cannot know put right, so
that a client generated from /openapi.json parses every answer it gets and knows every header it carries."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ._answers import POSITION_HEADER
from ._paths import is_gallery_scan, is_write

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


_FORBIDDEN = ("the API key is wrong (invalid_api_key), or its scope does not allow this request (key_scope: a "
              "read-only key on a write, a key limited to some galleries on another)")


def fix_openapi(schema: dict[str, Any], keyed: bool, key_for_reads: bool, read_only: bool = False) -> dict[str, Any]:
    """Put right, in place, what FastAPI's generator gets wrong about this service:
    - every operation can answer 422 in the service's error shape (a query parameter it does not take, an
      invalid id), never FastAPI's `{"detail": [...]}`, which the service never sends;
    - the key: both ways of sending it as security schemes, required on the operations that need one
      (writes and GET /duplicates, every one with SIMSEARCH_REQUIRE_KEY_FOR_READS) when a key is set;
    - a read-only service (SIMSEARCH_READ_ONLY) answers every write 405, with Allow;
    - the headers the middleware puts on answers, declared on each response that carries them
      (RESPONSE_HEADERS), as components.headers."""
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            if "422" not in responses or _refers_to(responses["422"], _VALIDATION_REF):
                responses["422"] = _error_422()
            if keyed and (key_for_reads or is_write(method.upper(), path) or is_gallery_scan(path)):
                op["security"] = list(_KEY)
            if keyed and "403" in responses:   # a scoped key (SIMSEARCH_API_KEY_FILE) is refused out of its scope
                responses["403"]["description"] = _FORBIDDEN
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


def install_openapi(app: FastAPI, keyed: bool, key_for_reads: bool, read_only: bool = False) -> None:
    """app.openapi() (and /openapi.json, /docs) answers the corrected document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fix_openapi(FastAPI.openapi(app), keyed, key_for_reads, read_only)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
