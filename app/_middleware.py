"""Pure-ASGI middleware: request ids, metrics, API key and rate limit, concurrency cap, body-size limit.

They run before any route, so a request refused here never has its body read: the key is checked
and a too-large Content-Length is refused before a single body byte is received.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import sqlite3
import sys
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import anyio
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import ERROR_CODE, REQUEST_ID, ApiError, all_routes, route_path, send_error
from ._metrics import Metrics

log = logging.getLogger("simsearch.app")

# Paths that never need a key, are never rate limited and never count against the concurrency cap.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_OPEN_PATHS = PROBE_PATHS | {"/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/favicon.ico"}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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

        token, code_token = REQUEST_ID.set(rid), ERROR_CODE.set(None)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001  (answered and logged; the server keeps serving)
            if started:  # part of the answer is out: nothing to do but let the server cut it
                raise
            index = sys.modules.get("index")   # loaded by then; not imported here, before /healthz answers
            if index is not None and isinstance(exc, index.StoreClosedError):
                await send_error(send_with_id, 503, "index_unavailable", "the gallery was closed while this request "
                                 "was under way (deleted, or the service is stopping); retry", {"Retry-After": "1"})
                return
            if index is not None and isinstance(exc, index.StoreUnavailableError):
                log.error("index unavailable on %s %s (request %s): %s", scope.get("method"), scope.get("path"), rid, exc)
                await send_error(send_with_id, 503, "index_unavailable", "the database that holds the gallery cannot "
                                 "be reached just now (the service's log says why); retry", {"Retry-After": "5"})
                return
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            await send_error(send_with_id, 500, "internal_error",
                             f"internal error ({type(exc).__name__}); see the server log")
        finally:
            REQUEST_ID.reset(token)
            ERROR_CODE.reset(code_token)


class RequestIdLogFilter(logging.Filter):
    """Sets `request_id` on every log record: the id of the request it was logged in, or "-"; and
    `error_code`, the code of the error that request is answered with (None before one, or without),
    with `error_suffix` for text lines (" code=..." or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        record.error_code = ERROR_CODE.get()
        record.error_suffix = f" code={record.error_code}" if record.error_code else ""
        return True


# Query parameters whose value may be a secret (a client that puts its API key in the URL): their values are
# replaced in access log lines. (The service never takes a key from the query string, but the line would keep it.)
_SECRET_PARAMS = re.compile(r"(?i)(?<=[?&])((?:[a-z0-9_.-]*[_.-])?(?:api[_-]?key|key|token|access[_-]?token|"
                            r"password|secret))=[^&#\s]*")


def redact_query(path: str) -> str:
    """`path` (with its query string) with the values of key-like parameters (api_key, key, token, ...) replaced
    by `[redacted]`."""
    return _SECRET_PARAMS.sub(r"\1=[redacted]", path) if "?" in path else path


class AccessLogRedactFilter(logging.Filter):
    """On uvicorn.access records (args: client, method, path with query, HTTP version, status), replaces the
    values of key-like query parameters, so that an API key a client put in the URL is not kept in the log,
    in text and JSON lines alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def install_access_log_redaction() -> None:
    """Put AccessLogRedactFilter on the uvicorn.access logger (once), whatever configured the logging."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedactFilter) for f in logger.filters):
        logger.addFilter(AccessLogRedactFilter())


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


def is_open_path(path: str) -> bool:
    """Probes, docs, the search page and its static files: no key, no rate limit."""
    return path in _OPEN_PATHS or path.startswith("/static/")


def is_write(method: str, path: str) -> bool:
    """Writes change a gallery: POST/PUT/PATCH/DELETE on /index and below, and on /galleries/<name>."""
    return method in _WRITE_METHODS and (path == "/index" or path.startswith(("/index/", "/galleries/")))


def is_gallery_scan(path: str) -> bool:
    """GET /duplicates searches a whole gallery with each of its items: an operator's tool that costs seconds
    of CPU, so it takes the key as writes do."""
    return path.rstrip("/") == "/duplicates"


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


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute, bursts up to `per_minute`.
    Kept in memory for the `max_clients` most recently seen clients."""

    def __init__(self, per_minute: int, max_clients: int = 10_000):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        self._buckets[client], wait = _take_token(tokens, last, now, self.capacity, self.rate)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def _take_token(tokens: float, last: float, now: float, capacity: float, rate: float) -> tuple[tuple[float, float], float]:
    """One step of a token bucket: ((tokens, last) after it, 0.0 or the seconds to wait for a token)."""
    if last > now:   # another process's later clock reading, or a clock set back: no time has passed
        now = last
    tokens = min(capacity, tokens + (now - last) * rate)
    if tokens >= 1.0:
        return (tokens - 1.0, now), 0.0
    return (tokens, now), (1.0 - tokens) / rate


class SharedRateLimiter:
    """RateLimiter's token buckets kept in a SQLite file that several processes on one machine share
    (`serve --workers N`), so that a client gets `per_minute` requests in all rather than in each process.
    One short write transaction a request. Should the file fail (a full disk, say), requests are let
    through and the failure is logged: a broken limiter must not take the service down with it."""

    _PRUNE_EVERY = 1000

    def __init__(self, path: Path | str, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.path = path
        self._takes = 0
        self._failing = False
        # Workers started together open the file at once; switching it to WAL takes a lock that SQLite's busy
        # timeout does not wait for, so "database is locked" there is waited out, for 10 s at most.
        deadline = time.monotonic() + 10.0
        while True:
            db = None
            try:
                db = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")   # a crash loses some counts, nothing else
                db.execute("CREATE TABLE IF NOT EXISTS buckets (client TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                           "last REAL NOT NULL) WITHOUT ROWID")
                self._db = db
                break
            except sqlite3.Error as exc:
                if db is not None:
                    db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise RuntimeError(f"rate limit file {path}: {exc}") from None
                time.sleep(0.02)

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        try:
            wait = self._take(client)
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            if not self._failing:
                log.warning("rate limit file %s failed (%s): requests are let through until it works again",
                            self.path, exc)
            self._failing = True
            return 0.0
        if self._failing:
            log.info("rate limit file %s works again", self.path)
            self._failing = False
        return wait

    def _take(self, client: str) -> float:
        db = self._db
        db.execute("BEGIN IMMEDIATE")   # the write lock first: no other process reads the bucket meanwhile
        # one clock for all the processes; a monotonic one would restart with the machine, and the file not
        now = time.time()
        row = db.execute("SELECT tokens, last FROM buckets WHERE client = ?", (client,)).fetchone()
        (tokens, last), wait = _take_token(*(row or (self.capacity, now)), now, self.capacity, self.rate)
        if last > now + 60:   # the clock was set back by more than a minute: start this bucket again from now
            (tokens, last), wait = _take_token(self.capacity, now, now, self.capacity, self.rate)
        db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (client, tokens, last))
        self._takes += 1
        if self._takes % self._PRUNE_EVERY == 0:   # a bucket untouched for a minute is full: as if absent
            db.execute("DELETE FROM buckets WHERE last < ?", (now - self.capacity / self.rate,))
        db.execute("COMMIT")
        return wait

    def close(self) -> None:
        self._db.close()


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def presented_key(headers: Headers) -> str | None:
    """The key from `X-API-Key`, or from `Authorization: Bearer <key>`."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def parse_keys(text: str) -> list[str]:
    """The keys in a key file's text or a SIMSEARCH_API_KEY value: one per line or comma-separated,
    surrounding spaces ignored, blank lines and lines starting with # skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [k.strip() for line in lines if line and not line.startswith("#") for k in line.split(",") if k.strip()]


class KeyRing:
    """The API keys accepted now (as digests): the fixed ones, or those of a key file, which is read
    again when it changes (looked at no more than once a second), so that keys rotate without a
    restart: add the new key, move the clients over, remove the old one. A file that becomes empty or
    unreadable keeps the keys read before (never opens the service by accident), logged as an error."""

    CHECK_EVERY = 1.0  # seconds between looks at the file

    def __init__(self, keys: list[str], file: Path | None = None):
        self.file = file
        self._seen: tuple | None = None
        self._next_check = 0.0
        self.digests: frozenset[bytes] = frozenset(_digest(k) for k in keys)
        if file is not None:
            self._reload(time.monotonic())

    def __bool__(self) -> bool:
        return bool(self.digests) or self.file is not None

    def accepts(self, key: str) -> bool:
        """Whether `key` is one of the keys (each compared in constant time)."""
        if self.file is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._reload(now)
        digest = _digest(key)
        return any([hmac.compare_digest(digest, d) for d in self.digests])  # a list: no early exit

    def _reload(self, now: float) -> None:
        self._next_check = now + self.CHECK_EVERY
        try:
            st = self.file.stat()
            seen: tuple = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as exc:
            seen = ("unreadable", exc.strerror)
        if seen == self._seen:  # unchanged, or still missing: said once
            return
        self._seen = seen
        keys, why = [], f"unreadable ({seen[1]})"
        if seen[0] != "unreadable":
            try:
                keys, why = parse_keys(self.file.read_text()), "empty"
            except OSError as exc:
                why = f"unreadable ({exc.strerror})"
        if not keys:
            log.error("API key file %s is %s: keeping the %d keys read before", self.file, why, len(self.digests))
            return
        before = len(self.digests)
        self.digests = frozenset(_digest(k) for k in keys)
        log.info("API keys read from %s: %d (%s)", self.file, len(self.digests),
                 "at start" if before == 0 else f"{before} before")


class AuthMiddleware:
    """API key for writes (and reads when configured), checked in constant time before the body is
    read; then a per-key (or per-client-IP) rate limit answering 429 with Retry-After."""

    def __init__(self, app: ASGIApp, keys: KeyRing, require_key_for_reads: bool,
                 limiter: RateLimiter | SharedRateLimiter | None, metrics: Metrics):
        self.app = app
        self.keys = keys
        self.require_key_for_reads = require_key_for_reads
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        if is_open_path(path):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        key = presented_key(headers)
        key_ok = key is not None and bool(self.keys) and self.keys.accepts(key)
        needs_key = bool(self.keys) and (self.require_key_for_reads or is_write(scope["method"], path)
                                         or is_gallery_scan(path))
        if needs_key and key is None:
            self.metrics.rejected.labels("missing_key").inc()
            return await send_error(send, 401, "missing_api_key",
                                    "this request needs an API key in the X-API-Key header or "
                                    "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
        if needs_key and not key_ok:
            self.metrics.rejected.labels("wrong_key").inc()
            return await send_error(send, 403, "invalid_api_key", "the API key is not valid")
        if self.limiter is not None:
            if key_ok:
                client = "key:" + _digest(key).hex()[:16]  # one bucket per key, shared by all who hold it
            else:
                client = "ip:" + (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.take(client)
            if wait > 0:
                self.metrics.rejected.labels("rate_limited").inc()
                retry = max(1, math.ceil(wait))
                return await send_error(send, 429, "rate_limited",
                                        f"more than {int(self.limiter.capacity)} requests a minute; "
                                        f"retry in {retry} s", {"Retry-After": str(retry)})
        await self.app(scope, receive, send)


class ConcurrencyLimitMiddleware:
    """Answers 503 at once when `limit` requests are already in flight (probes exempt), so an
    overloaded server sheds load instead of queueing without bound."""

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
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyTooLarge(ApiError):
    """The request body passed the size limit while it was being received."""

    def __init__(self, limit: int):
        super().__init__(413, "body_too_large", f"the request body is larger than the limit of {limit} bytes")


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
                 min_rate: float = BODY_MIN_RATE, grace: float = BODY_RATE_GRACE_SECONDS):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.timeout, self.min_rate, self.grace = timeout, min_rate, grace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: C901 (one pass over the ASGI messages; its branches are the body-size and timeout states)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, 400, "bad_request", f"Content-Length is not a number: {length!r}")
            if declared > self.limit:
                self.metrics.rejected.labels("body_too_large").inc()
                return await send_error(send, 413, "body_too_large",
                                        f"Content-Length {declared} is larger than the limit of {self.limit} bytes")
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
                if received > self.limit:
                    self.metrics.rejected.labels("body_too_large").inc()
                    raise BodyTooLarge(self.limit)
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
