"""Talking to a running service over HTTP, for the commands that do (index upload, index edit --url, search and
classify --url, index backup --url): one request with its 429/503 answers waited out and dropped connections
retried (for long enough to ride out a restart, where the caller asks), a download streamed into a file, the
service's error message, and the line a command ends with when the service refuses it."""
from __future__ import annotations

import time

RETRIES = 8            # 429 and 503 answers waited out (Retry-After), so many times a request
RECONNECT_SECONDS = 1.75   # a refused or dropped connection retried for so long (0.25, 0.5, 1 s apart)


def request(client, method: str, path: str, reconnect_seconds: float = RECONNECT_SECONDS,
            on_reconnect=None, **kwargs):
    """One request on the httpx `client`, waiting out 429 and 503 (Retry-After) and refused or dropped
    connections for `reconnect_seconds` (waits doubling from 0.25 s, at most 5 s each; a long window rides out
    a service restarting); the last answer, or the last connection error raised. `on_reconnect(exc, seconds)`
    is called before the first retry of a dropped connection."""
    return _retried(lambda: client.request(method, path, **kwargs), reconnect_seconds, on_reconnect)


def _retried(send, reconnect_seconds: float, on_reconnect=None, may_reconnect=lambda: True):
    """send() again while it answers 429 or 503 (RETRIES times at most, Retry-After apart) or raises for a refused
    or dropped connection (waits doubling from 0.25 s, at most 5 s each, for `reconnect_seconds` in all, and while
    may_reconnect()); its last answer, or its last connection error raised. `on_reconnect(exc, seconds)` is called
    before the first retry of a dropped connection."""
    import httpx

    busy = dropped = 0
    waited = 0.0
    while True:
        try:
            r = send()
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            pause = min(0.25 * 2 ** dropped, 5.0)
            if not may_reconnect() or waited + pause > reconnect_seconds:
                raise
            if dropped == 0 and on_reconnect is not None:
                on_reconnect(exc, reconnect_seconds)
            time.sleep(pause)
            waited += pause
            dropped += 1
            continue
        if r.status_code not in (429, 503) or busy == RETRIES:
            return r
        busy += 1
        time.sleep(retry_after(r.headers.get("Retry-After")))


def retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (ours are seconds; a date or nothing: 1 s), at most 30."""
    try:
        return min(max(float(value), 0.0), 30.0)
    except (TypeError, ValueError):
        return 1.0


def error_message(r) -> str:
    """The service's message in its error answer `r`, or the start of the body of one that is not its own."""
    try:
        return r.json()["error"]["message"]
    except Exception:  # noqa: BLE001
        return r.text[:200]


def fatal(status: int, message: str, url: str) -> str:
    """What a command says when the service at `url` answers `status` (with `message`) and it cannot go on:
    which key to pass for a 401, what to do after a 507."""
    if status == 401:
        return (f"the service at {url} needs an API key for writes: pass --api-key or set SIMSEARCH_API_KEY "
                f"(or SIMSEARCH_API_KEY_FILE) ({message})")
    if status == 403:
        return f"the service at {url} refused the API key ({message})"
    if status == 507:  # what was stored before is kept, and skipped by the next run
        return (f"the service at {url} answered 507: {message}. Run the same command again once it has "
                "space: it skips what is already stored")
    return f"the service at {url} answered {status}: {message}"


def held(client, reconnect_seconds: float = RECONNECT_SECONDS, gallery: str = "default") -> str:
    """How many items the service holds now ("?" when it does not say), and the position its gallery
    is at (X-Simsearch-Position), when it says, with the search options that wait for it (a position is
    the gallery's own: --gallery NAME goes with it)."""
    try:
        r = request(client, "GET", "/index", reconnect_seconds=reconnect_seconds, params={"limit": 1})
        if r.status_code == 404:   # a named gallery that nothing was stored in is not made
            return "0 items"
        body = r.json()
        count = body["count"]
    except Exception:  # noqa: BLE001
        return "?"
    position = body.get("position")
    after = f"--after {position}" if gallery == "default" else f"--gallery {gallery} --after {position}"
    return f"{count} items" + (f" (position {position}: `{after}` makes a search through a "
                               "replica see them)" if position else "")


def download(client, path: str, out, reconnect_seconds: float = RECONNECT_SECONDS, **kwargs):
    """GET `path` on the httpx `client` with its body streamed into the binary file `out`, as `request` makes a
    request (429 and 503 waited out, refused connections retried before the answer begins): the answer, whose
    body is in `out` when it is a 200 (and read, for its message, when it is not). Raises httpx's error for a
    body cut off (fewer bytes than its Content-Length, a dropped connection); a retry never begins again once
    part of a body is written."""
    def send():
        with client.stream("GET", path, **kwargs) as r:
            if r.status_code == 200:
                for chunk in r.iter_bytes(1 << 20):
                    out.write(chunk)
            else:
                r.read()
        return r

    return _retried(send, reconnect_seconds, may_reconnect=lambda: out.tell() == 0)
