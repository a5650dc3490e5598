"""Defences against abuse found by a security test: a body-read deadline (slow-body "slowloris"),
security headers, short validation messages, and API keys kept out of the access log. Over a real
`simsearch serve` process where the point is what happens on sockets."""
from __future__ import annotations

import json
import socket
import time

import anyio
import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import png, upload

ATTACKERS = 70          # more than the default cap of 64 requests in flight
BODY_TIMEOUT = 2        # seconds, SIMSEARCH_BODY_TIMEOUT_SECONDS of the server below


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A real server with the default cap (64 in flight), a body timeout of 2 s, and access lines logged."""
    work = tmp_path_factory.mktemp("hardening")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": "hardening-key", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0",
                           "SIMSEARCH_MAX_CONCURRENCY": "64", "SIMSEARCH_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT)},
                          work, ["--log-level", "info"])
    yield server
    stop_server(server)


def _read_answer(s: socket.socket, timeout: float) -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, closed): one HTTP answer read off a raw socket, and whether the server then
    closed the connection."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            part = s.recv(65536)
            if not part:
                break
            data += part
    except TimeoutError:   # the connection stayed open
        head, _, body = data.partition(b"\r\n\r\n")
        closed = False
    else:
        head, _, body = data.partition(b"\r\n\r\n")
        closed = True
    if not head:
        return 0, {}, b"", closed
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, closed


def test_clients_that_send_headers_and_then_trickle_no_body_are_cut_and_free_the_slots(live):
    """Finding 3: 70 sockets each announce a 100,000-byte body, send 5 bytes of it and then nothing. They take
    all 64 slots (the rest get 503) only until the body timeout: then each gets a 408 body_timeout, its
    connection is closed, and a normal search is answered again."""
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
    t0 = time.monotonic()
    socks = []
    try:
        for _ in range(ATTACKERS):
            s = socket.create_connection((live.host, live.port), timeout=10)
            s.sendall(head)
            socks.append(s)
        with httpx.Client(base_url=live.url, timeout=30) as c:
            held = False   # the attack works: the slots are taken
            while not held and time.monotonic() - t0 < BODY_TIMEOUT * 0.75:
                r = c.post("/search?k=1", files=[upload(png(1))])
                held = r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
            assert held, "the trickling clients did not take the slots: the test would prove nothing"
            while (r := c.post("/search?k=1", files=[upload(png(1))])).status_code != 200:
                assert r.status_code == 503, r.text
                assert time.monotonic() - t0 < BODY_TIMEOUT + 8, "the slots were not freed"
                time.sleep(0.1)
            freed_after = time.monotonic() - t0
        answers = [_read_answer(s, timeout=BODY_TIMEOUT + 5) for s in socks]
    finally:
        for s in socks:
            s.close()
    statuses = [a[0] for a in answers]
    assert statuses.count(408) >= 60 and set(statuses) <= {408, 503}, statuses
    for status, headers, body, closed in answers:
        if status == 408:
            err = json.loads(body)["error"]
            assert err["code"] == "body_timeout" and f"for {BODY_TIMEOUT} s" in err["message"], err
            assert headers["connection"] == "close" and closed
    assert BODY_TIMEOUT * 0.75 <= freed_after < BODY_TIMEOUT + 8
    metrics = httpx.get(live.url + "/metrics").text
    assert 'simsearch_rejected_requests_total{reason="body_timeout"}' in metrics
    count = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('simsearch_rejected_requests_total{reason="body_timeout"}'))
    assert count >= 60


def test_a_slow_but_steady_upload_is_not_cut(live):
    """The timeout is between two reads, not for the whole body: an upload that pauses under the timeout
    each time, taking longer in all than it, is answered as usual."""
    image = png(7, (200, 150))
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + image + b"\r\n--b--\r\n")
    pieces = [body[i:i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]
    s = socket.create_connection((live.host, live.port), timeout=10)
    try:
        s.sendall(b"POST /search?k=1 HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        t0 = time.monotonic()
        for piece in pieces:
            time.sleep(BODY_TIMEOUT * 0.6)
            s.sendall(piece)
        status, _, answer, _ = _read_answer(s, timeout=30)
    finally:
        s.close()
    assert time.monotonic() - t0 > BODY_TIMEOUT * 2
    assert status == 200, answer
    assert "results" in json.loads(answer) or json.loads(answer)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.post("/search?k=1", files=[upload(png(2))]).status_code == 200


# ---- the body deadline in-process: the average rate, and what is not timed --------------------------

class _Rejected:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def labels(self, reason):
        outer = self

        class _One:
            def inc(self):
                outer.counts[reason] = outer.counts.get(reason, 0) + 1
        return _One()


class _FakeMetrics:
    def __init__(self):
        self.rejected = _Rejected()


async def _run(middleware_kw: dict, messages, app_reads: int):
    """Run BodyLimitMiddleware around an app that reads `app_reads` messages and answers 200; the client side
    gives `messages`, each (delay, message). Returns (what was sent back, the metrics)."""
    from app._middleware import BodyLimitMiddleware

    feed = list(messages)

    async def receive():
        delay, message = feed.pop(0)
        await anyio.sleep(delay)
        return message

    async def app(scope, receive, send):
        for _ in range(app_reads):
            await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def send(message):
        sent.append(message)

    metrics = _FakeMetrics()
    mw = BodyLimitMiddleware(app, limit=10_000_000, metrics=metrics, **middleware_kw)
    await mw({"type": "http", "method": "POST", "path": "/search", "headers": []}, receive, send)
    return sent, metrics


def _chunk(body: bytes, more: bool = True):
    return {"type": "http.request", "body": body, "more_body": more}


@pytest.mark.anyio
async def test_a_body_that_keeps_coming_but_too_slowly_is_cut_after_the_grace_period():
    # 10 bytes every 0.1 s is 100 B/s: each read is well within the 5 s timeout, but under 1000 B/s on average
    trickle = [(0.1, _chunk(b"x" * 10)) for _ in range(100)]
    t0 = time.monotonic()
    sent, metrics = await _run({"timeout": 5.0, "min_rate": 1000, "grace": 0.5}, trickle, app_reads=100)
    assert 0.5 <= time.monotonic() - t0 < 2.0
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    err = json.loads(sent[1]["body"])["error"]
    assert err["code"] == "body_timeout" and "too slowly" in err["message"] and "1000 bytes a second" in err["message"]
    assert metrics.rejected.counts == {"body_timeout": 1}
    # the same trickle at 200 B/s against a floor of 100 B/s goes through
    trickle = [(0.05, _chunk(b"x" * 10)) for _ in range(20)] + [(0.05, _chunk(b"", more=False))]
    sent, metrics = await _run({"timeout": 5.0, "min_rate": 100, "grace": 0.2}, trickle, app_reads=21)
    assert sent[0]["status"] == 200 and metrics.rejected.counts == {}


@pytest.mark.anyio
async def test_only_body_reads_are_timed_not_a_wait_for_the_disconnect_after_it_nor_with_the_timeout_off():
    # the body is in at once; the app then waits 1.5 s for http.disconnect with a timeout of 0.3 s: not cut
    messages = [(0, _chunk(b"abc", more=False)), (1.5, {"type": "http.disconnect"})]
    sent, metrics = await _run({"timeout": 0.3}, messages, app_reads=2)
    assert sent[0]["status"] == 200 and metrics.rejected.counts == {}
    # a stalled body is cut after the timeout...
    stalled = [(0, _chunk(b"abc")), (1.5, _chunk(b"", more=False))]
    sent, metrics = await _run({"timeout": 0.3}, stalled, app_reads=2)
    assert sent[0]["status"] == 408 and metrics.rejected.counts == {"body_timeout": 1}
    assert "for 0.3 s (3 bytes received)" in json.loads(sent[1]["body"])["error"]["message"]
    # ...and waited for with the timeout at 0 (off)
    sent, metrics = await _run({"timeout": 0}, stalled, app_reads=2)
    assert sent[0]["status"] == 200 and metrics.rejected.counts == {}


# ---- security headers and the access log ---------------------------------------------------------

def test_every_answer_is_nosniff_and_the_page_and_docs_cannot_be_framed_by_another_site(live):
    """Finding 7: X-Content-Type-Options: nosniff on every answer (the page, JSON, errors, a middleware's
    refusal, thumbnails, probes); frame-ancestors 'self' and X-Frame-Options: SAMEORIGIN on the HTML pages
    (the search page holds an API key field). The policy restricts framing only: /docs still loads Swagger
    UI from its CDN."""
    with httpx.Client(base_url=live.url, timeout=30) as c:
        writer = {"X-API-Key": live.key}
        assert c.post("/index", files=[upload(png(5))], data={"id": "hdr"}, headers=writer).status_code == 201
        answers = {"page": c.get("/"), "docs": c.get("/docs"), "redoc": c.get("/redoc"),
                   "openapi": c.get("/openapi.json"), "healthz": c.get("/healthz"), "metrics": c.get("/metrics"),
                   "search": c.post("/search?k=1", files=[upload(png(5))]), "missing": c.get("/index/absent"),
                   "no key": c.post("/index", files=[upload(png(6))]), "thumbnail": c.get("/index/hdr/thumbnail"),
                   "bad parameter": c.post("/search?k=0", files=[upload(png(5))])}
    expected = {"page": 200, "docs": 200, "redoc": 200, "openapi": 200, "healthz": 200, "metrics": 200,
                "search": 200, "missing": 404, "no key": 401, "thumbnail": 200, "bad parameter": 422}
    assert {name: r.status_code for name, r in answers.items()} == expected
    for name, r in answers.items():
        assert r.headers.get("x-content-type-options") == "nosniff", name
        html = r.headers["content-type"].startswith("text/html")
        assert html == (name in ("page", "docs", "redoc")), name
        assert r.headers.get("content-security-policy") == ("frame-ancestors 'self'" if html else None), name
        assert r.headers.get("x-frame-options") == ("SAMEORIGIN" if html else None), name
    assert answers["thumbnail"].headers["content-type"] == "image/jpeg"
    # /docs is Swagger UI from jsdelivr (unreachable offline); the policy names no script or style sources
    assert "cdn.jsdelivr.net/npm/swagger-ui-dist" in answers["docs"].text and "/openapi.json" in answers["docs"].text


def test_an_api_key_put_in_a_query_string_is_not_written_to_the_access_log(live):
    """Finding 7: a client that sends its key as ?api_key= (refused: the key is taken from headers only) had it
    written to the access log in the clear; key-like parameters (api_key, key, token, ...) are redacted."""
    secrets = ["sekrit-in-url-1", "sekrit-in-url-2", "sekrit-in-url-3"]
    with httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post(f"/index?api_key={secrets[0]}&gallery=default", files=[upload(png(8))],
                   headers={"X-Request-ID": "redact-1"})
        assert r.status_code == 401
        c.get(f"/index?k=5&token={secrets[1]}", headers={"X-Request-ID": "redact-2"})
        c.get(f"/healthz?X-Api-Key={secrets[2]}", headers={"X-Request-ID": "redact-3"})
    deadline = time.monotonic() + 10
    while "redact-3" not in live.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = live.log.read_text()
    assert not any(s in text for s in secrets), [ln for ln in text.splitlines() if "sekrit" in ln]
    lines = [ln for ln in text.splitlines() if "request_id=redact-" in ln]
    assert len(lines) == 3, lines
    assert '"POST /index?api_key=[redacted]&gallery=default HTTP/1.1" 401' in lines[0]
    assert "/index?k=5&token=[redacted] " in lines[1] and "/healthz?X-Api-Key=[redacted] " in lines[2]
