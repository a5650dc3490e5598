"""API keys: where a request carries its key, the keys accepted (fixed, or a key file read again when it
changes), and AuthMiddleware, which checks the key before the body is read and then applies the rate limit."""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ._errors import route_path, send_error
from ._metrics import Metrics
from ._paths import is_gallery_scan, is_open_path, is_write
from ._rate_limit import RateLimiter, SharedRateLimiter

log = logging.getLogger("simsearch.app")


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
