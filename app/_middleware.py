"""Pure-ASGI middleware: root path, security headers, request ids, metrics, concurrency cap, body-size limit, HEAD.
The API key and rate limit are _auth.AuthMiddleware's; the log filters are _access_log's.

They run before any route, so a request refused here never has its body read: a too-large Content-Length is
refused before a single body byte is received.
"""
from __future__ import annotations

import logging
import math
import re
import sys
import time
import uuid
from typing import Callable

import anyio
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._access_log import KEY_USED
from ._errors import ERROR_CODE, REQUEST_ID, ApiError, all_routes, route_path, send_error
from ._metrics import Metrics
from ._paths import PROBE_PATHS, is_backup, is_write

log = logging.getLogger("simsearch.app")

# A caller's id is kept when it is 1-200 visible ASCII characters (a UUID, nginx's $request_id, AWS's
# "Root=1-..."); anything else (spaces, control characters, longer) could forge log lines: replaced.
# Visible ASCII without quotes or backslashes, as the gateway takes it (deploy/nginx.conf's map): one id
# for a request on both sides, safe in a log line and in JSON written by hand
_REQUEST_ID_OK = re.compile(r"[!#-\[\]-~]{1,200}")


class HeadMiddleware:
    """HEAD wherever GET is served (RFC 9110 9.1): the GET route answers, its headers go out and its body does
    not. A route of its own for HEAD (/healthz, /readyz) answers as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or self._has_head_route(scope):
            return await self.app(scope, receive, send)

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return   # the rest of the body: dropped
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)

    @staticmethod
    def _has_head_route(scope: Scope) -> bool:
        app = scope.get("app")
        for route in all_routes(getattr(getattr(app, "router", None), "routes", ())):
            if "HEAD" in (getattr(route, "methods", None) or ()) and route.matches(scope)[0] == Match.FULL:
                return True
        return False


class RequestIdMiddleware:
    """Gives every request an id: the caller's X-Request-ID when it is sane, else a new one (32 hex
    characters). It is sent back as X-Request-ID on every response, errors included, put in error
    bodies and in the log lines of the request (RequestIdLogFilter), so one id follows a request from
    the gateway's log through the service's.

    It also answers what nothing else handled: an unexpected exception becomes the API's 500 here,
    with the id, logged with its traceback and the id. (Starlette's own last-resort handler runs
    outside every middleware, after the id is gone, and closes the client's connection.)"""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("x-request-id")
        rid = given if given is not None and _REQUEST_ID_OK.fullmatch(given) else uuid.uuid4().hex
        header = (b"x-request-id", rid.encode("ascii"))

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        token, code_token, key_token = REQUEST_ID.set(rid), ERROR_CODE.set(None), KEY_USED.set(None)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001  (answered and logged; the server keeps serving)
            if started:  # part of the answer is out: nothing to do but let the server cut it
                raise
            index = sys.modules.get("index")   # loaded by then; not imported here, before /healthz answers
            if index is not None and isinstance(exc, index.StoreClosedError):
                await send_error(send_with_id, 503, "index_unavailable", "the gallery was closed while this request "
                                 "was under way (deleted, replaced by a restore, or the service is stopping); retry",
                                 {"Retry-After": "1"})
                return
            if index is not None and isinstance(exc, index.InvalidItemError):
                # what the request asked, refused by the store, which says why (a filter a Milvus gallery of older
                # rows cannot answer yet): the caller's to change, not a fault of the service
                await send_error(send_with_id, 422, "invalid_parameter", str(exc))
                return
            if index is not None and isinstance(exc, index.StoreUnavailableError):
                log.error("index unavailable on %s %s (request %s): %s", scope.get("method"), scope.get("path"),
                          rid, exc)
                await send_error(send_with_id, 503, "index_unavailable", "the database that holds the gallery cannot "
                                 "be reached just now (the service's log says why); retry", {"Retry-After": "5"})
                return
            # out of open files (a read that needed a connection of its own): the operator's to fix, said once
            service = getattr(getattr(scope.get("app"), "state", None), "service", None)
            refused = None if service is None else service.files_refusals.answer(
                exc, f"{scope.get('method')} {route_path(scope)} was not answered")
            if refused is not None:
                await send_error(send_with_id, refused.status, refused.code, refused.message, refused.headers)
                return
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            await send_error(send_with_id, 500, "internal_error",
                             f"internal error ({type(exc).__name__}); see the server log")
        finally:
            REQUEST_ID.reset(token)
            ERROR_CODE.reset(code_token)
            KEY_USED.reset(key_token)


# Sent on every answer: no MIME sniffing (a thumbnail or JSON answer is never run as a script or page).
_NOSNIFF = (b"x-content-type-options", b"nosniff")
# Sent on HTML answers (the search page, /docs, /redoc): only pages of this origin may frame them, so that no
# other site can overlay the page that holds the API key field (clickjacking). Scripts are not restricted:
# /docs loads Swagger UI from a CDN.
_HTML_HEADERS = ((b"content-security-policy", b"frame-ancestors 'self'"), (b"x-frame-options", b"SAMEORIGIN"))


class RootPathMiddleware:
    """The service under a path prefix (SIMSEARCH_ROOT_PATH, /simsearch), whether the gateway strips the prefix
    or passes it on: a path without it gets it put before it, as uvicorn's own --root-path does, and a path with
    it is left as it is (uvicorn's would put it there twice: a 404), and the ASGI root_path is set. Outermost, so
    that every middleware and route sees the one shape, and reads its decisions from route_path."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if not (path == self.root or path.startswith(self.root + "/")):
                raw = scope.get("raw_path")
                scope = dict(scope, path=self.root + path)
                if raw is not None:
                    scope["raw_path"] = self.root.encode("ascii") + raw
            scope["root_path"] = self.root
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds X-Content-Type-Options: nosniff to every answer, and to HTML ones Content-Security-Policy:
    frame-ancestors 'self' and X-Frame-Options: SAMEORIGIN (a header the answer already has is kept)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                extra = [_NOSNIFF] + (list(_HTML_HEADERS) if ctype.lower().startswith(b"text/html") else [])
                headers += [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def route_resolver(app) -> Callable[[Scope], str]:
    """A function giving the route template of a request (bounded label values for metrics)."""

    def resolve(scope: Scope) -> str:
        partial = None
        for route in all_routes(app.router.routes):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path_format", None) or getattr(route, "path", "other")
            if match == Match.PARTIAL and partial is None:
                partial = getattr(route, "path_format", None) or getattr(route, "path", "other")
        return partial or "unmatched"

    return resolve


class MetricsMiddleware:
    """Counts every HTTP request and its latency by method, route template and status; calls `wrote()` after
    each write answered 2xx (writes work: Service.refusals)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, resolve: Callable[[Scope], str],
                 wrote: Callable[[], None] | None = None):
        self.app, self.metrics, self.resolve, self.wrote = app, metrics, resolve, wrote

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self.resolve(scope)
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            labels = (scope["method"], route, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            if self.wrote is not None and 200 <= status < 300 and is_write(scope["method"], route_path(scope)):
                self.wrote()


class ConcurrencyLimitMiddleware:
    """Answers 503 at once when `limit` requests are already in flight (probes exempt), so an
    overloaded server sheds load instead of queueing without bound.

    A backup (GET /galleries/NAME/backup) counts while its copy is made and no longer once its answer begins: the
    rest is a file sent at the pace the client takes it (minutes, hours), which would hold a slot that searches
    need; the route makes one backup at a time, so what is sent past the cap is bounded."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or route_path(scope) in PROBE_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self.metrics.rejected.labels("overloaded").inc()
            return await send_error(send, 503, "overloaded",
                                    f"the server is at its limit of {self.limit} requests in flight; retry shortly",
                                    {"Retry-After": "1"})
        self.in_flight += 1
        counted = True

        async def send_leaving_at_start(message: Message) -> None:
            nonlocal counted
            if counted and message["type"] == "http.response.start":
                counted = False
                self.in_flight -= 1
            await send(message)

        try:
            await self.app(scope, receive, send_leaving_at_start if is_backup(route_path(scope)) else send)
        finally:
            if counted:
                self.in_flight -= 1


class BodyTooLarge(ApiError):
    """The request body passed the size limit while it was being received."""

    def __init__(self, limit: int, setting: str = "SIMSEARCH_MAX_BODY_BYTES"):
        super().__init__(413, "body_too_large", f"the request body is larger than the limit of {limit} bytes "
                         f"({setting})")


class BodyTimeout(ApiError):
    """The client stopped sending its body, or sent it too slowly (a slow-body "slowloris")."""

    def __init__(self, message: str):
        # the rest of the body may still come: the connection is closed rather than read on
        super().__init__(408, "body_timeout", message, {"Connection": "close"})


# The slowest average rate a body may arrive at, in bytes a second, once it has been waited for longer than
# BODY_RATE_GRACE_SECONDS: a phone uploading on a poor mobile link sends tens of KB a second, a client that
# trickles a few bytes to hold a request open sends less.
BODY_MIN_RATE = 1024
BODY_RATE_GRACE_SECONDS = 30.0


class BodyLimitMiddleware:
    """Refuses a Content-Length over the limit before reading anything, and cuts a body without
    Content-Length (chunked) as soon as the bytes received pass the limit.

    With `timeout` > 0 it also bounds how long a body may take, so that clients that send headers and then
    a trickle (or nothing) cannot hold the concurrency cap's slots: each wait for more body bytes lasts at
    most `timeout` seconds (nginx's client_body_timeout), and once the waits add up to more than `grace`
    seconds the body must have come at `min_rate` bytes a second on average over them. Otherwise: 408
    `body_timeout`, with `Connection: close`. Only the time spent waiting for the body counts (not the
    route's own work between reads), and only until the body is complete: a route that then waits for the
    client to disconnect is not timed."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics, timeout: float = 0.0,
                 min_rate: float = BODY_MIN_RATE, grace: float = BODY_RATE_GRACE_SECONDS,
                 restore_limit: int | None = None):
        self.app, self.limit, self.metrics = app, limit, metrics
        # a backup file restored (PUT /galleries/NAME/backup) is a whole store: SIMSEARCH_MAX_RESTORE_BYTES
        self.restore_limit = limit if restore_limit is None else restore_limit
        self.timeout, self.min_rate, self.grace = timeout, min_rate, grace

    # noqa C901 below: one pass over the ASGI messages; its branches are the body-size and timeout states
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: C901
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        restore = scope["method"] == "PUT" and is_backup(route_path(scope))
        limit = self.restore_limit if restore else self.limit
        setting = "SIMSEARCH_MAX_RESTORE_BYTES" if restore else "SIMSEARCH_MAX_BODY_BYTES"
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, 400, "bad_request", f"Content-Length is not a number: {length!r}")
            if declared > limit:
                self.metrics.rejected.labels("body_too_large").inc()
                return await send_error(send, 413, "body_too_large",
                                        f"Content-Length {declared} is larger than the limit of {limit} bytes "
                                        f"({setting})")
        received = 0
        waited = 0.0          # seconds spent waiting for body messages
        complete = self.timeout <= 0   # once the body is in (or with no timeout), reads are not timed
        started = False

        async def timed_receive() -> Message:
            nonlocal waited, complete
            # the wait ends at the per-read timeout, or where the average rate would fall under min_rate
            budget = max(self.grace, received / self.min_rate) - waited if self.min_rate > 0 else math.inf
            wait = min(self.timeout, budget)
            t0 = time.monotonic()
            message = None
            if wait > 0:
                with anyio.move_on_after(wait):
                    message = await receive()
            waited += time.monotonic() - t0
            if message is None:
                self.metrics.rejected.labels("body_timeout").inc()
                if wait < self.timeout:
                    raise BodyTimeout(f"the request body came too slowly: {received} bytes in {waited:.0f} s, "
                                      f"under {self.min_rate:.0f} bytes a second")
                raise BodyTimeout(f"no part of the request body came for {self.timeout:g} s "
                                  f"({received} bytes received)")
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive() if complete else await timed_receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.metrics.rejected.labels("body_too_large").inc()
                    raise BodyTooLarge(limit, setting)
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:
                raise
            await send_error(send, exc.status, exc.code, exc.message, exc.headers)
