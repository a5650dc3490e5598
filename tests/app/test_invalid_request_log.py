"""uvicorn writes "Invalid HTTP request received." at WARNING for every request it cannot parse, naming neither
client nor request: any client could fill the log at WARNING with garbage (a soak: 498 lines for 498 requests).
The service writes one such line a minute, the next saying how many were left out; each request is still
answered 400 by uvicorn."""
from __future__ import annotations

import logging
import socket

import httpx

from app._access_log import INVALID_REQUEST, InvalidRequestLogFilter

from .conftest import start_server, stop_server


def _garbage_request(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"FOO123 /\x00 HTTP/9\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer


def test_a_server_sent_many_unparsable_requests_logs_one_line_for_them_and_answers_each_400(hybrid1_artifact,
                                                                                           tmp_path):
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        answers = [_garbage_request(live.host, live.port) for _ in range(40)]
        assert all(a.startswith(b"HTTP/1.1 400") for a in answers), answers[:2]
        assert httpx.get(live.url + "/healthz").status_code == 200   # still serving
    finally:
        stop_server(live)
    assert live.log.read_text(errors="replace").count(INVALID_REQUEST) == 1, live.log_tail()


def test_the_next_line_after_the_interval_says_how_many_were_left_out():
    now = [0.0]
    kept = InvalidRequestLogFilter(interval=60, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)

    assert kept.filter(record(INVALID_REQUEST))
    assert [kept.filter(record(INVALID_REQUEST)) for _ in range(5)] == [False] * 5
    assert kept.filter(record("another warning"))   # other lines pass
    now[0] = 61.0
    line = record(INVALID_REQUEST)
    assert kept.filter(line) and line.getMessage() == \
        f"{INVALID_REQUEST} (5 more since the last such line, not logged one by one)"
    assert not kept.filter(record(INVALID_REQUEST))
