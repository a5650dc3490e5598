"""Logging filters: the request id, error code and API key class on every log record, and key-like query
parameters redacted from uvicorn's access log lines."""
from __future__ import annotations

import contextvars
import logging
import re
import threading
import time

from ._errors import ERROR_CODE, REQUEST_ID

# Which of the service's API keys the request was served under (set by AuthMiddleware), for its access log
# line: the key's class (KeyScope.kind: full, read, galleries, read+galleries, or "invalid" for a key that is
# none of them) and the line of SIMSEARCH_API_KEY_FILE that gave it (None for SIMSEARCH_API_KEY). None when
# the request sent no key, or no key was looked at (a probe, the docs, a service without keys). Never the key.
KEY_USED: contextvars.ContextVar[tuple[str, int | None] | None] = contextvars.ContextVar("key_used", default=None)


class RequestIdLogFilter(logging.Filter):
    """Sets `request_id` on every log record: the id of the request it was logged in, or "-";
    `error_code`, the code of the error that request is answered with (None before one, or without),
    with `error_suffix` for text lines (" code=..." or ""); and `key_class` and `key_line`, the API key the
    request was served under (KEY_USED; both None without one), with `key_suffix` for text lines
    (" key=read key_line=3", " key=full", or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        record.error_code = ERROR_CODE.get()
        record.error_suffix = f" code={record.error_code}" if record.error_code else ""
        record.key_class, record.key_line = KEY_USED.get() or (None, None)
        record.key_suffix = "" if record.key_class is None else f" key={record.key_class}" + (
            "" if record.key_line is None else f" key_line={record.key_line}")
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


# uvicorn's line for a request it cannot parse (it answers 400 itself: the app never sees the request)
INVALID_REQUEST = "Invalid HTTP request received."


class InvalidRequestLogFilter(logging.Filter):
    """On uvicorn.error: at most one "Invalid HTTP request received." line a minute (`interval`), the next one
    saying how many were left out meanwhile. uvicorn writes that WARNING once for every request it cannot parse,
    naming neither client nor request, so any client could fill the log at WARNING with garbage (a soak: 498
    lines for 498 such requests)."""

    def __init__(self, interval: float = 60.0, clock=time.monotonic) -> None:
        super().__init__()
        self.interval, self._clock = interval, clock
        self._last: float | None = None   # when the last such line was written
        self._left_out = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != INVALID_REQUEST:
            return True
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.interval:
                self._left_out += 1
                return False
            self._last, left_out, self._left_out = now, self._left_out, 0
        if left_out:
            record.msg = f"{INVALID_REQUEST} ({left_out} more since the last such line, not logged one by one)"
        return True


def install_access_log_redaction() -> None:
    """Put AccessLogRedactFilter on the uvicorn.access logger and InvalidRequestLogFilter on uvicorn.error (once
    each), whatever configured the logging."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedactFilter) for f in logger.filters):
        logger.addFilter(AccessLogRedactFilter())
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, InvalidRequestLogFilter) for f in errors.filters):
        errors.addFilter(InvalidRequestLogFilter())
