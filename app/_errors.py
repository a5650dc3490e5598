"""The one JSON error shape of the API, and the handlers that map every failure onto it."""
from __future__ import annotations

import contextvars
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import Send

# The id of the request being served (set by RequestIdMiddleware), for error bodies and log lines:
# contextvars follow the request's task, and anyio copies them into the worker threads it runs.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The code of the error the request is being answered with, for its access log line: a 400 is then told
# apart (empty_file, invalid_image, missing_file) without the client's body.
ERROR_CODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("error_code", default=None)

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_parameter", 429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """A failure explained to the client: HTTP status, a stable machine code and a message naming the
    wrong value. Rendered as {"error": {"code": ..., "message": ...}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON document of every error response, with the request's id (to quote when reporting it)."""
    body = {"code": code, "message": message}
    ERROR_CODE.set(code)
    rid = REQUEST_ID.get()
    if rid is not None:
        body["request_id"] = rid
    return {"error": body}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSONResponse in the API's error shape."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: dict[str, str] | None = None) -> None:
    """Send an error response from a pure-ASGI middleware (before any route runs)."""
    body = json.dumps(error_body(code, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# How much of an invalid value a validation message repeats: enough to recognise it, never the whole of a
# 4 KB filter or a longer value (the answer would be as long as the input).
_ECHO_CHARS = 200


def _echo(value: Any) -> str:
    """repr(value), cut to about _ECHO_CHARS characters with an ellipsis and the value's length."""
    text = repr(value)
    if len(text) <= _ECHO_CHARS:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else len(text)
    unit = "bytes" if isinstance(value, bytes) else "items" if isinstance(value, (list, tuple, dict)) else "characters"
    return f"{text[:_ECHO_CHARS]}... ({size} {unit})"


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body", "header")]
        where = ".".join(loc) or "request"
        got = f" (got {_echo(err['input'])})" if "input" in err and err["input"] is not None else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


def route_path(scope) -> str:
    """The request's path as the routes match it: without the root path (SIMSEARCH_ROOT_PATH, uvicorn's
    --root-path), which uvicorn puts before the path it received. What a request is (a write, a probe, an open
    page) is decided on this path, so that a prefix changes none of it. (Starlette's routing reads it the same
    way, in a private helper of its own.)"""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root):]
    return rest if rest == "" or rest.startswith("/") else path


def _id_with_line_break(request: Request) -> str | None:
    """The id in /index/{id} or /search/{id} when it holds a line feed, which the routes' path parameter
    does not match (so the request would read as "no route"); else None."""
    path = route_path(request.scope)
    for prefix in ("/index/", "/search/"):
        if path.startswith(prefix) and "\n" in path:
            return path[len(prefix):]
    return None


def all_routes(routes):
    """The routes of an app, the included routers' flattened (FastAPI wraps each included router in one route)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path takes (Starlette's 405 names only the first matching route's), HEAD
    wherever GET is (app._middleware.HeadMiddleware serves it)."""
    scope = dict(request.scope)
    methods: set[str] = set()
    for route in all_routes(request.app.router.routes):
        taken = getattr(route, "methods", None)
        if taken and route.matches({**scope, "method": next(iter(taken))})[0] == Match.FULL:
            methods |= set(taken)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, HTTP exceptions and parameter validation onto the JSON error shape. (Unexpected
    exceptions are answered by RequestIdMiddleware: a 500 with no internals in the message, logged
    with the request's id.)"""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            item = _id_with_line_break(request)
            if item is not None:
                return error_response(422, "invalid_id", f"id {item[:80]!r} is not valid: an id holds no control "
                                                         "characters, and no item has this one")
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            message = f"method {request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"
            return error_response(405, code, message, {**(getattr(exc, "headers", None) or {}),
                                                       "Allow": ", ".join(allowed)})
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameter", _describe_validation(exc))



class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, whose preflight refusals (an origin, method or header not allowed) are the API's JSON
    error, 400 `cors_preflight_refused`, instead of a text/plain body."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode("latin-1")   # "Disallowed CORS origin, headers"
        asked = {"origin": request_headers.get("origin"),
                 "method": request_headers.get("access-control-request-method"),
                 "headers": request_headers.get("access-control-request-headers")}
        named = "; ".join(f"{k} {v!r}"[:200] for k, v in asked.items() if v)
        keep = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return error_response(400, "cors_preflight_refused", f"{reason} (asked: {named}); the service allows the "
                              "origins in SIMSEARCH_CORS_ORIGINS", keep)
