"""A service with many galleries, against a real `simsearch serve` (session 54's hunt, /tmp/s54/J): a restore
past SIMSEARCH_MAX_GALLERIES is refused before its body is read (it read up to 16 GiB first); GET /galleries
after a restart does not open every gallery not open yet at every call (430-780 ms a call at 1000 galleries), and
still sees a count another process changed."""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

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
            r = client.put("/galleries/new/backup", content=backup,
                           headers={"Content-Type": "application/octet-stream"})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "too_many_galleries"), r.text
            # at the cap, a gallery that exists is still replaced by a restore
            r = client.put("/galleries/b/backup", params={"replace": "true"}, content=backup,
                           headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            assert sorted(g["name"] for g in client.get("/galleries").json()["galleries"]) == ["a", "b", "default"]
    finally:
        stop_server(live)


class _Opens:
    """Counts the openings of the files named `name` in `folders` (Linux inotify, IN_OPEN), by any process."""

    IN_OPEN = 0x20

    def __init__(self, folders: list[Path], name: str):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"no inotify here: {os.strerror(ctypes.get_errno())}")
        self.name = name.encode()
        for folder in folders:
            if self._libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_OPEN) < 0:
                pytest.skip(f"cannot watch {folder}: {os.strerror(ctypes.get_errno())}")

    def count(self) -> int:
        """The openings since the last call."""
        found = 0
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                named = data[at + 16:at + 16 + size].rstrip(b"\0")
                found += bool(mask & self.IN_OPEN) and named == self.name
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify (Linux) counts the openings")
def test_listing_galleries_not_open_reads_each_again_only_when_its_files_changed(hybrid1_artifact, tmp_path):
    import index

    names = [f"g{i:02d}" for i in range(30)]
    live = _serve(hybrid1_artifact, tmp_path)
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            info = client.get("/index", params={"limit": 0}).json()
            for i, name in enumerate(names):
                r = client.post("/index", params={"gallery": name},
                                json={"model": info["model"], "items": _vectors(info["dimension"], 1 + i % 4, i)})
                assert r.status_code == 201, r.text
    finally:
        stop_server(live)
    stopped = time.time()
    folders = [index.gallery_path(tmp_path / "data", name) for name in names]
    opens = _Opens(folders, "store.sqlite3")
    try:
        live = _serve(hybrid1_artifact, tmp_path, log_name="server2.log")   # none of them open
        try:
            time.sleep(max(0.0, stopped + 2.5 - time.time()))   # the files unchanged for longer than the service waits
            with httpx.Client(base_url=live.url, timeout=60) as client:
                def listed() -> dict[str, tuple[int, bool]]:
                    r = client.get("/galleries")
                    assert r.status_code == 200, r.text
                    return {g["name"]: (g["count"], g["open"]) for g in r.json()["galleries"]}

                want = {name: (1 + i % 4, False) for i, name in enumerate(names)}
                assert {n: c for n, c in listed().items() if n != "default"} == want
                opens.count()
                for _ in range(3):
                    assert {n: c for n, c in listed().items() if n != "default"} == want
                assert opens.count() == 0, "a listing opened the galleries again, none of which changed"
                # another process writes two of them (a gallery the service has not opened is not locked by it)
                for name, change in (("g05", "add"), ("g06", "delete")):
                    store = index.Store.open(index.StoreConfig(path=index.gallery_path(tmp_path / "data", name)))
                    try:
                        if change == "add":
                            store.upsert([index.Item(f"new{k}", np.asarray(v["vector"], np.float32))
                                          for k, v in enumerate(_vectors(info["dimension"], 2, 77))])
                        else:
                            store.delete(["i0"])
                    finally:
                        store.close()
                want.update(g05=(want["g05"][0] + 2, False), g06=(want["g06"][0] - 1, False))
                opens.count()
                assert {n: c for n, c in listed().items() if n != "default"} == want
                assert 2 <= opens.count() <= 4, "the two galleries changed are read again, the others not"
                time.sleep(2.5)   # and once their files are settled, kept again
                listed()
                opens.count()
                assert {n: c for n, c in listed().items() if n != "default"} == want
                assert opens.count() == 0
        finally:
            stop_server(live)
    finally:
        opens.close()
