"""The OpenAPI document as the service answers: FastAPI's, with what its generator cannot know put right, so
that a client generated from /openapi.json parses every answer it gets."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ._middleware import is_gallery_scan, is_write

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


def _error_422() -> dict[str, Any]:
    return {"description": "a parameter, id, label or metadata is invalid; a query parameter the route does not take",
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}


def _refers_to(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers_to(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, ref) for v in node)
    return False


def fix_openapi(schema: dict[str, Any], keyed: bool, key_for_reads: bool) -> dict[str, Any]:
    """Put right, in place, what FastAPI's generator gets wrong about this service:
    - every operation can answer 422 in the service's error shape (a query parameter it does not take, an
      invalid id), never FastAPI's `{"detail": [...]}`, which the service never sends;
    - the key: both ways of sending it as security schemes, required on the operations that need one
      (writes and GET /duplicates, every one with SIMSEARCH_REQUIRE_KEY_FOR_READS) when a key is set."""
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            if "422" not in responses or _refers_to(responses["422"], _VALIDATION_REF):
                responses["422"] = _error_422()
            if keyed and (key_for_reads or is_write(method.upper(), path) or is_gallery_scan(path)):
                op["security"] = list(_KEY)
    components = schema.setdefault("components", {})
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and not _refers_to({k: v for k, v in schema.items() if k != "components"},
                                                f"#/components/schemas/{unused}") \
                and not _refers_to({k: v for k, v in schemas.items() if k != unused}, f"#/components/schemas/{unused}"):
            del schemas[unused]
    components["securitySchemes"] = dict(SECURITY_SCHEMES)
    return schema


def install_openapi(app: FastAPI, keyed: bool, key_for_reads: bool) -> None:
    """app.openapi() (and /openapi.json, /docs) answers the corrected document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fix_openapi(FastAPI.openapi(app), keyed, key_for_reads)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
