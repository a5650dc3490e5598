"""API keys: where a request carries its key, the keys accepted (fixed, or a key file read again when it
changes), and AuthMiddleware, which checks the key before the body is read and then applies the rate limit."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from ._access_log import KEY_USED
from ._errors import route_path, send_error
from ._metrics import Metrics
from ._paths import (GALLERY_LIST_PATH, METRICS_PATH, PROBE_PATHS, galleries_named, is_backup, is_gallery_scan,
                     is_open_path, is_write)
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


_SENDABLE = re.compile(r"[\x21-\x7e]+")   # what an HTTP header carries as it is: visible ASCII, no space


def unsendable(keys: list[str]) -> int | None:
    """The place (1, 2, ...) of the first key holding a character no client can send in an HTTP header (a letter
    beyond ASCII, a control character), or None: a service taking such a key would refuse every client."""
    return next((place for place, key in enumerate(keys, start=1) if not _SENDABLE.fullmatch(key)), None)


def parse_keys(text: str) -> list[str]:
    """The keys in a SIMSEARCH_API_KEY value (full-access keys): comma-separated or one per line, surrounding
    spaces ignored, blank lines and lines starting with # skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [k.strip() for line in lines if line and not line.startswith("#") for k in line.split(",") if k.strip()]


@dataclass(frozen=True)
class KeyScope:
    """What a key may do: every request (the default), reads only, and/or only some galleries; and the line of
    the key file that says so (for the access log; None for SIMSEARCH_API_KEY's keys)."""

    read_only: bool = False
    galleries: frozenset[str] | None = None   # None: every gallery
    line: int | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """The key's class, for logs and metrics (never the key): full, read, galleries or read+galleries."""
        parts = (["read"] if self.read_only else []) + (["galleries"] if self.galleries is not None else [])
        return "+".join(parts) or "full"

    def may_do(self) -> str:
        """What the key may do, in words, for the message of a refusal."""
        what = "read only (searches, listings, items)" if self.read_only else "read and write"
        if self.galleries is None:
            return what
        return f"{what}, in the galleries {', '.join(sorted(self.galleries))}"


FULL_ACCESS = KeyScope()
_GALLERY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")   # the names the routes take (_service.GALLERY_NAME)
_OPTIONS_DOC = "options are `read` and `galleries=NAME[,NAME...]`, after the key and a space"


class KeyFileError(ValueError):
    """A key file line that cannot be read, named by its number (never by the key it holds)."""


def _line_scope(options: list[str], number: int) -> KeyScope:
    """The scope the options after a key give it; KeyFileError naming the line and the option's place (an
    unknown word may be a second key written after a space, so it is never repeated)."""
    read_only, galleries = False, None
    for place, option in enumerate(options, start=2):
        name, eq, value = option.partition("=")
        if option == "read" and not read_only:
            read_only = True
        elif name == "galleries" and eq and galleries is None:
            names = value.split(",")
            wrong = [n for n in names if not _GALLERY_NAME.fullmatch(n)]
            if wrong:
                raise KeyFileError(f"line {number}: galleries= holds {', '.join(map(repr, wrong[:3]))}, not a "
                                   f"gallery name (a-z, 0-9, _ and -, at most 63; `default` for the default "
                                   f"gallery), comma-separated without spaces")
            galleries = frozenset(names)
        elif option == "read" or (name == "galleries" and eq):
            raise KeyFileError(f"line {number}: word {place} repeats an option; give each once")
        else:
            raise KeyFileError(f"line {number}: word {place} is not an option ({_OPTIONS_DOC})")
    return KeyScope(read_only, galleries, number)


def read_key_file(path: Path) -> list[tuple[str, KeyScope]]:
    """parse_key_file of the file at `path`, read as UTF-8 (a byte order mark skipped) or, after its byte order
    mark, UTF-16 (what PowerShell 5's `>` and Out-File write); KeyFileError for other bytes, OSError as open's."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}): save it as UTF-8") from None
    return parse_key_file(text)


def parse_key_file(text: str) -> list[tuple[str, KeyScope]]:
    """The keys of a key file's text with their scopes: one line each, `KEY` (full access), `KEY read` (reads
    only), `KEY galleries=a,b` (only those galleries), or both options; a line may also hold several keys
    comma-separated, which then share its options. Blank lines and lines starting with # are skipped.
    KeyFileError naming the line (never the key) for an unknown option, a bad gallery name, a key given twice or one
    no client could send (not visible ASCII). A byte order mark at the start is skipped."""
    keys: list[tuple[str, KeyScope]] = []
    first_line: dict[str, int] = {}
    text = text.removeprefix("\ufeff")   # the byte order mark Notepad and PowerShell 5 write before UTF-8
    for number, line in enumerate(text.splitlines(), start=1):
        words = re.sub(r"\s*,\s*", ",", line).split()   # "a, b": two keys, as before options
        if not words or words[0].startswith("#"):
            continue
        scope = _line_scope(words[1:], number)
        for key in (k for k in words[0].split(",") if k):
            if unsendable([key]):
                raise KeyFileError(f"line {number}: a key holds a character an HTTP header cannot carry (a letter "
                                   f"beyond ASCII, a control character): no client could send it; keys are "
                                   f"visible ASCII")
            if key in first_line:
                raise KeyFileError(f"line {number}: a key of line {first_line[key]} again; give each key once, "
                                   f"with all its options")
            first_line[key] = number
            keys.append((key, scope))
    return keys


class KeyRing:
    """The API keys accepted now (as digests), each with its scope: the fixed ones (full access), or those of
    a key file, which is read again when it changes (looked at no more than once a second), so that keys and
    their scopes change without a restart: add the new key, move the clients over, remove the old one. A file
    that becomes empty, unreadable or malformed keeps the keys read before (never opens the service by
    accident), logged as an error naming the line (never the key)."""

    CHECK_EVERY = 1.0  # seconds between looks at the file

    def __init__(self, keys: list[str], file: Path | None = None):
        self.file = file
        self._seen: tuple | None = None
        self._next_check = 0.0
        self.scopes: list[tuple[bytes, KeyScope]] = [(_digest(k), FULL_ACCESS) for k in keys]
        if file is not None:
            self._reload(time.monotonic())

    def __bool__(self) -> bool:
        return bool(self.scopes) or self.file is not None

    def scope_of(self, key: str) -> KeyScope | None:
        """The scope of `key`, or None when it is not one of the keys (each compared in constant time)."""
        if self.file is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._reload(now)
        digest = _digest(key)
        found = None
        for known, scope in self.scopes:   # every one compared: no early exit
            if hmac.compare_digest(digest, known):
                found = scope
        return found

    def accepts(self, key: str) -> bool:
        """Whether `key` is one of the keys, whatever its scope."""
        return self.scope_of(key) is not None

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
                keys, why = read_key_file(self.file), "empty"
            except OSError as exc:
                why = f"unreadable ({exc.strerror})"
            except KeyFileError as exc:
                why = f"not valid: {exc}"
        if not keys:
            log.error("API key file %s is %s: keeping the %d keys read before", self.file, why, len(self.scopes))
            return
        before = len(self.scopes)
        self.scopes = [(_digest(k), scope) for k, scope in keys]
        kinds = Counter(scope.kind for _, scope in keys)
        log.info("API keys read from %s: %d (%s): %s", self.file, len(self.scopes),
                 "at start" if before == 0 else f"{before} before",
                 ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))


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
        # /metrics names every gallery and its size: open where reads are (GET /galleries shows them to anyone
        # there), else it takes a key as reads do
        if is_open_path(path) or (path == METRICS_PATH and not self.require_key_for_reads):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        key = presented_key(headers)
        key_scope = self.keys.scope_of(key) if key is not None and self.keys else None
        key_ok = key_scope is not None
        if key is not None and self.keys:   # which key, for the access log line (never the key itself)
            KEY_USED.set((key_scope.kind, key_scope.line) if key_ok else ("invalid", None))
        needs_key = bool(self.keys) and key_needed(scope["method"], path, self.require_key_for_reads)
        if needs_key and key is None:
            self.metrics.rejected.labels("missing_key").inc()
            return await send_error(send, 401, "missing_api_key",
                                    "this request needs an API key in the X-API-Key header or "
                                    "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
        if needs_key and not key_ok:
            self.metrics.rejected.labels("wrong_key").inc()
            return await send_error(send, 403, "invalid_api_key", "the API key sent is not one of the service's keys")
        # A key's scope limits whatever it is used for, reads too when they need no key (a request without one
        # is then an anonymous read, which its scope does not concern).
        refusal = out_of_scope(key_scope, scope["method"], path, QueryParams(scope["query_string"])) \
            if key_ok else None
        if refusal is not None:
            self.metrics.rejected.labels("key_scope").inc()
            return await send_error(send, 403, "key_scope", refusal)
        if self.limiter is not None and path not in PROBE_PATHS:   # /metrics: scraped, never rate limited
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
        if key_ok and key_scope.galleries is not None and scope["method"] in ("GET", "HEAD") \
                and path.rstrip("/") == GALLERY_LIST_PATH:
            # HEAD as its GET: the list is made and filtered here, and only its headers go out
            listing = _listing_only(key_scope.galleries, send, head=scope["method"] == "HEAD")
            return await self.app(dict(scope, method="GET"), receive, listing)
        await self.app(scope, receive, send)


def key_needed(method: str, path: str, key_for_reads: bool) -> bool:
    """Whether a service with keys refuses this request without a valid one (401, 403 invalid_api_key): writes,
    gallery scans, backups, and every request with SIMSEARCH_REQUIRE_KEY_FOR_READS, /metrics among them (the open
    paths never reach this)."""
    return key_for_reads or is_write(method, path) or is_gallery_scan(path) or is_backup(path)


def refused_to_read_keys(method: str, path: str) -> bool:
    """Whether a key that may only read (`KEY read`) is refused this request (403 key_scope): writes, and backups
    (they hand over every item of a gallery at once)."""
    return is_write(method, path) or is_backup(path)


def out_of_scope(key_scope: KeyScope, method: str, path: str, query: QueryParams) -> str | None:
    """Why a key of this scope may not make this request (for a 403 key_scope), or None when it may. Names
    the gallery asked for and what the key may do, never the key."""
    if key_scope.read_only and refused_to_read_keys(method, path):
        why = f"{method} {path} is a write" if is_write(method, path) else \
            "a backup hands over every item of the gallery at once, so it needs a key that may write the gallery"
        return f"this API key may {key_scope.may_do()}: {why}"
    if key_scope.galleries is None:
        return None
    if path == METRICS_PATH:   # reached where reads need a key (AuthMiddleware lets it through otherwise)
        return (f"this API key may {key_scope.may_do()}: /metrics names every gallery and its size, so it needs "
                f"a key not limited to some galleries")
    outside = [name for name in galleries_named(path, query) or [] if name not in key_scope.galleries]
    if not outside:
        return None
    shown = ", ".join(repr(name[:70]) for name in dict.fromkeys(outside))
    return f"this API key may not use the gallery {shown}; it may {key_scope.may_do()}"


def _listing_only(galleries: frozenset[str], send: Send, head: bool = False) -> Send:
    """`send` for GET /galleries answered to a key limited to `galleries`: the list holds those alone (the
    body is held until its end, then sent with its new length; with `head`, for a HEAD, that length and no
    body). A 200 whose body is not the list becomes a 500: the other galleries are never shown."""
    start: dict = {}
    chunks: list[bytes] = []

    async def send_listing(message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if start["status"] == 200:
            try:
                listing = json.loads(body)
                listing["galleries"] = [g for g in listing["galleries"] if g["name"] in galleries]
            except (ValueError, KeyError, TypeError):
                return await send_error(send, 500, "internal_error", "the list of galleries could not be read")
            body = json.dumps(listing).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if head else body})

    return send_listing
