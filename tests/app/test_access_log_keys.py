"""Each access log line says which of the service's API keys the request was served under, without the key: its
class (full, read, galleries, read+galleries, or invalid) and, for a key of SIMSEARCH_API_KEY_FILE, its line
there; nothing for a request that sent no key. Over a real `simsearch serve`, in text and JSON lines."""
from __future__ import annotations

import json
import time

import httpx

from .conftest import start_server, stop_server

FULL, READ, SHOP, WRONG = "full-key-a1", "read-key-b2", "shop-key-c3", "not-a-key-d4"
KEY_FILE = f"# the service's keys\n{FULL}\n\n{READ} read\n{SHOP} read galleries=default\n"   # lines 2, 4, 5


def _access_lines(live, last_id: str) -> list[str]:
    """The server's log lines once the line of request `last_id` is written (uvicorn writes it after the answer)."""
    deadline = time.monotonic() + 10
    while f"request_id={last_id}" not in live.log.read_text() and f'"{last_id}"' not in live.log.read_text():
        assert time.monotonic() < deadline, live.log_tail()
        time.sleep(0.1)
    text = live.log.read_text()
    assert not [k for k in (FULL, READ, SHOP, WRONG) if k in text], "a key was written to the log"
    return text.splitlines()


def _line_of(lines: list[str], request_id: str) -> str:
    found = [ln for ln in lines if ln.endswith(f"request_id={request_id}")]
    assert len(found) == 1, (request_id, lines[-20:])
    return found[0]


def test_a_text_access_line_names_the_class_and_key_file_line_of_the_key_and_never_the_key(hybrid1_artifact,
                                                                                          tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(KEY_FILE)
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path,
                        ["--api-key-file", str(keys), "--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            def send(method: str, path: str, rid: str, key: str | None = None, **kw) -> int:
                headers = {"X-Request-ID": rid, **({"X-API-Key": key} if key else {})}
                return c.request(method, path, headers=headers, **kw).status_code

            assert send("DELETE", "/index/absent", "full-write", FULL) == 404
            assert send("DELETE", "/index/absent", "read-write", READ) == 403
            assert send("GET", "/index", "read-read", READ) == 200
            assert send("GET", "/index", "shop-read", SHOP) == 200
            assert send("DELETE", "/index/absent", "wrong-write", WRONG) == 403
            assert send("GET", "/index", "wrong-read", WRONG) == 200   # reads need no key: served as anonymous
            assert send("GET", "/index", "anonymous", None) == 200
            assert c.delete("/index/absent", headers={"Authorization": f"Bearer {READ}",
                                                      "X-Request-ID": "bearer"}).status_code == 403
            assert send("GET", "/healthz", "probe", FULL) == 200   # a probe: no key looked at
    finally:
        stop_server(live)
    lines = _access_lines(live, "probe")
    assert _line_of(lines, "full-write").endswith(" 404 Not Found key=full key_line=2 code=not_found "
                                                  "request_id=full-write")
    assert _line_of(lines, "read-write").endswith(" 403 Forbidden key=read key_line=4 code=key_scope "
                                                  "request_id=read-write")
    assert _line_of(lines, "read-read").endswith(" 200 OK key=read key_line=4 request_id=read-read")
    assert _line_of(lines, "shop-read").endswith(" 200 OK key=read+galleries key_line=5 request_id=shop-read")
    assert _line_of(lines, "wrong-write").endswith(" 403 Forbidden key=invalid code=invalid_api_key "
                                                   "request_id=wrong-write")
    assert _line_of(lines, "wrong-read").endswith(" 200 OK key=invalid request_id=wrong-read")
    assert _line_of(lines, "anonymous").endswith(" 200 OK request_id=anonymous")
    assert " key=read key_line=4 " in _line_of(lines, "bearer")
    assert _line_of(lines, "probe").endswith(" 200 OK request_id=probe")


def test_a_json_access_line_carries_key_and_key_line_and_a_key_of_the_variable_has_no_line(hybrid1_artifact,
                                                                                          tmp_path):
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": FULL,
                         "SIMSEARCH_LOG_FORMAT": "json"}, tmp_path, ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.delete("/index/absent", headers={"X-API-Key": FULL, "X-Request-ID": "j-full"}).status_code == 404
            assert c.delete("/index/absent", headers={"X-API-Key": WRONG, "X-Request-ID": "j-wrong"}).status_code == 403
            assert c.get("/index", headers={"X-Request-ID": "j-none"}).status_code == 200
            with c.stream("GET", "/index", headers={"X-Request-ID": "j-last"}) as r:
                assert r.status_code == 200
    finally:
        stop_server(live)
    _access_lines(live, "j-last")
    access = {r["request_id"]: r for r in map(json.loads, live.log.read_text().splitlines())
              if r.get("logger") == "uvicorn.access"}
    assert access["j-full"]["key"] == "full" and "key_line" not in access["j-full"]
    assert access["j-wrong"]["key"] == "invalid" and access["j-wrong"]["code"] == "invalid_api_key"
    assert "key" not in access["j-none"] and "key_line" not in access["j-none"]
    assert not [r for r in map(json.loads, live.log.read_text().splitlines())
                if r.get("logger") != "uvicorn.access" and ("key" in r or "key_class" in r)]
