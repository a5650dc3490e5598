"""A service with many galleries, against a real `simsearch serve` (session 54's hunt, /tmp/s54/J): a restore
past SIMSEARCH_MAX_GALLERIES is refused before its body is read (it read up to 16 GiB first)."""
from __future__ import annotations

import socket
import time

import httpx
import numpy as np

from .conftest import start_server, stop_server


def _vectors(dim: int, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [{"id": f"i{k}", "vector": [round(float(x), 5) for x in row]} for k, row in enumerate(v)]


def _serve(hybrid1_artifact, work, env: dict[str, str] | None = None, log_name: str = "server.log"):
    return start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "OMP_NUM_THREADS": "1", **(env or {})}, work,
                        log_name=log_name)


def _answer_to_a_body_begun(live, path: str, first: bytes, wait: float) -> tuple[bytes, float]:
    """Send PUT `path` with a chunked body of which only `first` comes, and read the answer (what came within
    `wait` seconds, and when): a server that reads the body first answers nothing meanwhile."""
    with socket.create_connection((live.host, live.port), timeout=wait) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {live.host}:{live.port}\r\nContent-Type: application/octet-stream"
                     f"\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n" % len(first) + first + b"\r\n")
        t0, got = time.monotonic(), b""
        try:
            while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + _length(got):
                part = sock.recv(65536)
                if not part:
                    break
                got += part
        except TimeoutError:
            pass
        return got, time.monotonic() - t0


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_restore_past_the_gallery_cap_is_refused_before_its_body_is_read(hybrid1_artifact, tmp_path):
    live = _serve(hybrid1_artifact, tmp_path, {"SIMSEARCH_MAX_GALLERIES": "3"})
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            info = client.get("/index", params={"limit": 0}).json()
            for name in ("a", "b"):   # with the default one: 3, the cap
                r = client.post("/index", params={"gallery": name},
                                json={"model": info["model"], "items": _vectors(info["dimension"], 3, len(name))})
                assert r.status_code == 201, r.text
            backup = client.get("/galleries/a/backup").content
            # a new name: 422 at once, while the client has sent 64 KiB of a body it has not ended
            got, took = _answer_to_a_body_begun(live, "/galleries/new/backup", b"\0" * 65536, wait=15)
            assert got.startswith(b"HTTP/1.1 422 "), (got[:300], took)
            assert b'"too_many_galleries"' in got and b"'new' would be one more" in got, got
            assert took < 10, took
            # the same for a whole body sent: refused, nothing kept
            r = client.put("/galleries/new/backup", content=backup, headers={"Content-Type": "application/octet-stream"})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "too_many_galleries"), r.text
            # at the cap, a gallery that exists is still replaced by a restore
            r = client.put("/galleries/b/backup", params={"replace": "true"}, content=backup,
                           headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            assert sorted(g["name"] for g in client.get("/galleries").json()["galleries"]) == ["a", "b", "default"]
    finally:
        stop_server(live)
