"""GET /galleries while a restore replaces a gallery (`PUT /galleries/NAME/backup?replace=true`) lists it every
time, with the items of the old or of the new: the gallery exists throughout for a client. Before the
fifty-second session the listing left it out while its folder was swapped (25 of 2,348 listings in a hunt), and a
script waiting for it, or a dashboard, took it for gone. Over a real `simsearch serve`."""
from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from .conftest import start_server, stop_server


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("restore-listing")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    yield server
    stop_server(server)


def test_a_gallery_being_replaced_by_a_restore_is_listed_throughout(live):
    rng = np.random.default_rng(2)
    with httpx.Client(base_url=live.url, timeout=60) as c:
        info = c.get("/index", params={"limit": 0}).json()
        items = [{"id": f"x{i}", "vector": rng.standard_normal(info["dimension"]).tolist()} for i in range(30)]
        assert c.post("/index", params={"gallery": "gx"}, json={"model": info["model"], "items": items}).status_code == 201
        backup = c.get("/galleries/gx/backup").content
    seen: dict[str, int] = {}
    stop = threading.Event()

    def list_galleries():
        with httpx.Client(base_url=live.url, timeout=30) as c:
            while not stop.is_set():
                r = c.get("/galleries")
                gx = [g for g in r.json()["galleries"] if g["name"] == "gx"] if r.status_code == 200 else None
                what = f"status {r.status_code}" if gx is None else "missing" if not gx else f"count {gx[0]['count']}"
                seen[what] = seen.get(what, 0) + 1

    listers = [threading.Thread(target=list_galleries) for _ in range(2)]
    for t in listers:
        t.start()
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            for _ in range(60):
                r = c.put("/galleries/gx/backup", params={"replace": "true"}, content=backup,
                          headers={"Content-Type": "application/vnd.sqlite3"})
                assert r.status_code == 201, r.text
    finally:
        stop.set()
        for t in listers:
            t.join()
    assert seen.get("count 30", 0) > 100, seen   # the listing ran all along
    assert set(seen) == {"count 30"}, f"listings of gallery gx while it was replaced: {seen}"
