"""kill -9 of the real server while clients are adding images over HTTP: after a restart every item a
201 acknowledged is there with its label and metadata and is found by its own image, and writes work
again. (tests/index/test_durability.py proves the same of the store alone; this is the whole service:
the group commit, the answer sent only after the commit, the restart replaying the journal.)"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from .conftest import encode, pattern, start_server, stop_server

WRITERS = 4


def _png(seed: int) -> bytes:
    return encode(pattern(seed), "PNG")


def _seed(writer: int, i: int) -> int:
    return writer * 100_000 + i


def test_sigkill_of_the_server_while_clients_write_loses_no_acknowledged_item(hybrid1_artifact, tmp_path):
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    live = start_server(env, tmp_path)
    acked: list[tuple[str, int, int]] = []   # (id, writer, i) for every 201
    refused: list[str] = []
    stop = threading.Event()

    def write(w: int) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                id_ = f"w{w}-{i}"
                try:
                    r = c.post("/index", files={"file": (f"{id_}.png", _png(_seed(w, i)), "image/png")},
                               data={"id": id_, "label": f"writer-{w}", "metadata": json.dumps({"i": i})})
                except httpx.TransportError:
                    return   # the server died with this request in flight: it was never acknowledged
                if r.status_code == 201 and r.json()["ids"] == [id_]:
                    acked.append((id_, w, i))
                else:
                    refused.append(f"{id_}: {r.status_code} {r.text}")
                i += 1

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 60 and time.monotonic() < deadline and not refused:
            time.sleep(0.05)
        assert not refused, refused[:3]
        assert len(acked) >= 60, f"only {len(acked)} writes acknowledged in 120 s:\n{live.log_tail()}"
        os.kill(live.proc.pid, signal.SIGKILL)   # the writers are still sending
        live.proc.wait(15)
    finally:
        stop.set()
        if live.proc.poll() is None:
            live.proc.kill()
            live.proc.wait(15)
        for t in threads:
            t.join(60)
    assert live.proc.returncode == -signal.SIGKILL
    assert not refused, refused[:3]

    again = start_server(env, tmp_path, log_name="restarted.log")
    try:
        with httpx.Client(base_url=again.url, timeout=60) as c:
            for id_, w, i in acked:
                r = c.get(f"/index/{id_}")
                assert r.status_code == 200, f"acknowledged {id_} lost after kill -9: {r.status_code} {r.text}"
                assert r.json()["label"] == f"writer-{w}" and r.json()["metadata"] == {"i": i}
            # at most the one request each writer had in flight was written without its answer arriving
            count = c.get("/index?limit=1").json()["count"]
            assert len(acked) <= count <= len(acked) + WRITERS, (count, len(acked))
            # the index was rebuilt with them: each is found by its own image
            for start in range(0, len(acked), 32):
                chunk = acked[start:start + 32]
                r = c.post("/batch/search?k=3",
                           files=[("file", (f"{id_}.png", _png(_seed(w, i)), "image/png")) for id_, w, i in chunk])
                assert r.status_code == 200, r.text
                for (id_, _, _), q in zip(chunk, r.json()["queries"]):
                    exact = {h["id"] for h in q["results"] if h["score"] > 0.9999}
                    assert id_ in exact, (id_, q["results"])
            # and the restarted service takes writes again
            r = c.post("/index", files={"file": ("after.png", _png(7), "image/png")}, data={"id": "after-restart"})
            assert r.status_code == 201, r.text
            assert c.get("/index/after-restart").status_code == 200
    finally:
        stop_server(again)
    assert "Traceback" not in again.log.read_text(errors="replace"), again.log_tail()
