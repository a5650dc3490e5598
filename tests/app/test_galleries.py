"""Named galleries over real HTTP: `?gallery=NAME` on every gallery route keeps separate indexes in one
service (the first POST /index to a name makes it), GET /galleries lists them, DELETE /galleries/NAME
drops one; they outlast a restart, are capped by SIMSEARCH_MAX_GALLERIES, and a read-only replica
serves one the writer made after it started and forgets one the writer dropped."""
from __future__ import annotations

import time
from contextlib import contextmanager

import httpx

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload

KEY = {"X-API-Key": "gallery-key"}


def _env(artifact, tmp_path, **extra):
    return {"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
            "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": "gallery-key", **extra}


def _first(client, image: bytes, **params) -> str | None:
    r = client.post("/search", params={"k": 1, **params}, files=[upload(image)])
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    return hits[0]["id"] if hits else None


@contextmanager
def _writer_and_replica(artifact, tmp_path, refresh_seconds: str):
    """A writer and a read-only replica of its data folder, as clients (w, r); afterwards, their logs are
    checked to be free of Tracebacks."""
    env = _env(artifact, tmp_path)
    writer = start_server(env, tmp_path, log_name="writer.log")
    replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true", "SIMSEARCH_REFRESH_SECONDS": refresh_seconds},
                           tmp_path, log_name="replica.log")
    try:
        with httpx.Client(base_url=writer.url, timeout=60, headers=KEY) as w, \
                httpx.Client(base_url=replica.url, timeout=60) as r:
            yield w, r
    finally:
        stop_server(replica)
        stop_server(writer)
    assert "Traceback" not in replica.log_tail(20_000) and "Traceback" not in writer.log_tail(20_000)


def test_named_galleries_keep_their_items_apart_and_are_listed_edited_and_dropped(hybrid1_artifact, tmp_path):
    live = start_server(_env(hybrid1_artifact, tmp_path), tmp_path)
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.post("/index", files=[upload(png(1))], data={"id": "home"}, headers=KEY).status_code == 201
            made = c.post("/index", params={"gallery": "shoes"}, files=[upload(png(i)) for i in (2, 3)],
                          data={"id": ["boot", "sandal"], "label": "shoe"}, headers=KEY)
            assert made.status_code == 201 and made.headers["x-simsearch-position"] == "2.0", made.text
            assert (tmp_path / "data" / "galleries" / "shoes" / "index" / "store.sqlite3").is_file()
            # each gallery finds only its own items
            assert _first(c, png(2), gallery="shoes") == "boot" and _first(c, png(1), gallery="shoes") != "home"
            assert _first(c, png(2)) == "home" and _first(c, png(1), gallery="default") == "home"
            listing = c.get("/index", params={"gallery": "shoes"}).json()
            assert (listing["gallery"], listing["count"], [it["id"] for it in listing["items"]]) == \
                ("shoes", 2, ["boot", "sandal"])
            assert c.get("/index").json()["count"] == 1
            batch = c.post("/batch/search", params={"k": 1, "gallery": "shoes"},
                           files=[upload(png(3), "a.png"), upload(png(2), "b.png")]).json()
            assert [q["results"][0]["id"] for q in batch["queries"]] == ["sandal", "boot"]
            assert c.post("/classify", params={"gallery": "shoes"}, files=[upload(png(3))]).json()["label"] == "shoe"
            assert [h["id"] for h in c.post("/search/boot", params={"gallery": "shoes"}).json()["results"]] == ["sandal"]
            assert c.get("/index/boot/thumbnail", params={"gallery": "shoes"}).status_code == 200
            assert c.get("/index/boot").status_code == 404   # not in the default gallery
            # edits and deletions in a gallery, with its own positions
            edited = c.patch("/index/boot", params={"gallery": "shoes"}, json={"label": "boot"}, headers=KEY)
            assert edited.status_code == 200 and edited.headers["x-simsearch-position"] == "2.1"
            assert c.get("/index/boot", params={"gallery": "shoes"}).json()["label"] == "boot"
            assert c.delete("/index/sandal", params={"gallery": "shoes"}, headers=KEY).status_code == 204
            assert c.delete("/index", params={"gallery": "shoes", "label": "boot"}, headers=KEY).json()["deleted"] == 1
            assert c.post("/index", params={"gallery": "shoes"}, files=[upload(png(4))], data={"id": "clog"},
                          headers=KEY).status_code == 201
            assert c.get("/galleries").json() == {
                "galleries": [{"name": "default", "count": 1, "open": True}, {"name": "shoes", "count": 1, "open": True}],
                "max_galleries": 100}
            metrics = c.get("/metrics").text
            for line in ('simsearch_gallery_items{gallery="default"} 1.0', 'simsearch_gallery_items{gallery="shoes"} 1.0',
                         "simsearch_galleries 2.0"):
                assert line in metrics.splitlines(), metrics[-1500:]

            # what cannot be: each refused in words, nothing made
            for r in (c.get("/index", params={"gallery": "hats"}),
                      c.post("/search", params={"gallery": "hats"}, files=[upload(png(1))]),
                      c.patch("/index/x", params={"gallery": "hats"}, json={"label": "y"}, headers=KEY),
                      c.delete("/index/x", params={"gallery": "hats"}, headers=KEY),
                      c.delete("/galleries/hats", headers=KEY)):
                assert_error(r, 404, "gallery_not_found", "'hats'")
            assert_error(c.get("/index", params={"gallery": "Hats!"}), 422, "invalid_parameter")
            assert_error(c.delete("/galleries/default", headers=KEY), 422, "invalid_gallery", "cannot be deleted")
            assert c.delete("/galleries/shoes").status_code == 401   # a write: the key is asked
            assert [g["name"] for g in c.get("/galleries").json()["galleries"]] == ["default", "shoes"]

            dropped = c.delete("/galleries/shoes", headers=KEY)
            assert dropped.status_code == 200 and dropped.json() == {"name": "shoes", "deleted": 1}
            assert not (tmp_path / "data" / "galleries" / "shoes").exists()
            assert [g["name"] for g in c.get("/galleries").json()["galleries"]] == ["default"]
            assert_error(c.get("/index", params={"gallery": "shoes"}), 404, "gallery_not_found")
            # the same name again is a new, empty gallery
            assert c.post("/index", params={"gallery": "shoes"}, files=[upload(png(5))], data={"id": "new"},
                          headers=KEY).headers["x-simsearch-position"] == "1.0"
    finally:
        stop_server(live)
    assert "Traceback" not in live.log_tail(20_000)


def test_galleries_outlast_a_restart_and_making_them_is_capped_never_opening_them(hybrid1_artifact, tmp_path):
    live = start_server(_env(hybrid1_artifact, tmp_path, SIMSEARCH_MAX_GALLERIES="3"), tmp_path)
    try:
        for name, seed in (("a", 1), ("b", 2)):
            assert httpx.post(live.url + "/index", params={"gallery": name}, files=[upload(png(seed))],
                              data={"id": name + "-one"}, headers=KEY, timeout=60).status_code == 201
        refused = httpx.post(live.url + "/index", params={"gallery": "c"}, files=[upload(png(3))], headers=KEY, timeout=60)
        assert_error(refused, 422, "too_many_galleries", "SIMSEARCH_MAX_GALLERIES", "'c'", "at most 3")
        assert not (tmp_path / "data" / "galleries" / "c").exists()
    finally:
        stop_server(live)
    # a lower cap after the restart: the three galleries there all open (the cap counted open galleries, and b,
    # opened after a, was a 422 for reads too); making one more is still refused
    live = start_server(_env(hybrid1_artifact, tmp_path, SIMSEARCH_MAX_GALLERIES="2"), tmp_path, log_name="again.log")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.get("/galleries").json()["galleries"] == [
                {"name": "default", "count": 0, "open": True}, {"name": "a", "count": 1, "open": False},
                {"name": "b", "count": 1, "open": False}]
            assert _first(c, png(1), gallery="a") == "a-one"   # opened when first asked for
            assert _first(c, png(2), gallery="b") == "b-one"
            assert [g["open"] for g in c.get("/galleries").json()["galleries"]] == [True, True, True]
            assert c.post("/index", params={"gallery": "b"}, files=[upload(png(4))], headers=KEY).status_code == 201
            assert_error(c.post("/index", params={"gallery": "c"}, files=[upload(png(3))], headers=KEY),
                         422, "too_many_galleries", "at most 2")
    finally:
        stop_server(live)


def test_a_replica_serves_galleries_the_writer_makes_after_it_started_and_forgets_dropped_ones(
        hybrid1_artifact, tmp_path):
    with _writer_and_replica(hybrid1_artifact, tmp_path, "0.2") as (w, r):
        assert_error(r.get("/index", params={"gallery": "late"}), 404, "gallery_not_found", "read-only")
        made = w.post("/index", params={"gallery": "late"}, files=[upload(png(6))], data={"id": "six"})
        assert _first(r, png(6), gallery="late") == "six"   # opened on first use
        assert r.post("/index", params={"gallery": "late"}, files=[upload(png(7))], headers=KEY).status_code == 405
        added = w.post("/index", params={"gallery": "late"}, files=[upload(png(7))], data={"id": "seven"})
        hit = r.post("/search", params={"k": 1, "gallery": "late"}, files=[upload(png(7))],
                     headers={"X-Simsearch-After": added.headers["x-simsearch-position"]}).json()["results"][0]
        assert hit["id"] == "seven" and made.headers["x-simsearch-position"] == "1.0"
        assert w.delete("/galleries/late").status_code == 200
        deadline = time.monotonic() + 10
        while r.get("/index", params={"gallery": "late"}).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_error(r.get("/index", params={"gallery": "late"}), 404, "gallery_not_found")
        # made again under the same name: the replica serves the new one, not the one it had open
        assert w.post("/index", params={"gallery": "late"}, files=[upload(png(8))], data={"id": "eight"}
                      ).status_code == 201
        assert _first(r, png(8), gallery="late") == "eight" and _first(r, png(6), gallery="late") == "eight"


def test_a_replica_asked_for_a_gallery_the_writer_just_dropped_says_404_before_its_next_refresh(
        hybrid1_artifact, tmp_path):
    # refreshing once a minute: the replica's own loop never sees the drop during the test
    with _writer_and_replica(hybrid1_artifact, tmp_path, "60") as (w, r):
        assert w.post("/index", params={"gallery": "brief"}, files=[upload(png(6))], data={"id": "six"}
                      ).status_code == 201
        # opened on the replica, and read from several of its worker threads
        for _ in range(8):
            assert r.get("/index", params={"gallery": "brief"}).json()["count"] == 1
        assert _first(r, png(6), gallery="brief") == "six"
        assert w.delete("/galleries/brief").status_code == 200
        for path in ("/index", "/index/six"):
            assert_error(r.get(path, params={"gallery": "brief"}), 404, "gallery_not_found")
        assert_error(r.post("/search", params={"gallery": "brief"}, files=[upload(png(6))]), 404,
                     "gallery_not_found")
        # made again under the same name: the replica opens the new one at once
        assert w.post("/index", params={"gallery": "brief"}, files=[upload(png(8))], data={"id": "eight"}
                      ).status_code == 201
        assert r.get("/index", params={"gallery": "brief"}).json()["count"] == 1
        assert _first(r, png(6), gallery="brief") == "eight"


def test_listing_galleries_while_one_is_made_and_dropped_never_fails_either(hybrid1_artifact, tmp_path):
    # GET /galleries reads the folders of galleries this process has not open, so it used to open a
    # gallery being made (its database had no tables yet: 500) or being deleted (the reader's SQLite
    # files appeared in the folder under removal, and DELETE got 500 "Directory not empty").
    import threading

    left = tmp_path / "data" / "galleries" / ".deleted-old-0123abcd" / "index"   # what an earlier removal left
    left.mkdir(parents=True)
    (left / "store.sqlite3-shm").write_bytes(b"x")
    live = start_server(_env(hybrid1_artifact, tmp_path), tmp_path)
    assert not left.exists(), "the service removes what deleted galleries left, at its start"
    failures: list[str] = []
    stop = threading.Event()

    def list_galleries():
        with httpx.Client(base_url=live.url, timeout=60, headers=KEY) as c:
            while not stop.is_set():
                r = c.get("/galleries")
                if r.status_code != 200:
                    failures.append(f"GET /galleries: {r.status_code} {r.text[:200]}")
                elif any(g["name"].startswith(".") for g in r.json()["galleries"]):
                    failures.append(f"GET /galleries listed a folder on its way out: {r.text[:200]}")

    listers = [threading.Thread(target=list_galleries) for _ in range(3)]
    try:
        for t in listers:
            t.start()
        with httpx.Client(base_url=live.url, timeout=60, headers=KEY) as c:
            deadline = time.monotonic() + 8
            cycles = 0
            while time.monotonic() < deadline or cycles < 10:
                made = c.post("/index", params={"gallery": "churn"}, files=[upload(png(cycles))])
                dropped = c.delete("/galleries/churn")
                if made.status_code != 201 or dropped.status_code != 200:
                    failures.append(f"make {made.status_code} {made.text[:200]}; drop {dropped.status_code} "
                                    f"{dropped.text[:200]}")
                cycles += 1
    finally:
        stop.set()
        for t in listers:
            t.join(60)
        stop_server(live)
    assert not failures, failures[:5]
    galleries = tmp_path / "data" / "galleries"
    assert not list(galleries.iterdir()), "a dropped gallery left its folder"   # nor a leftover
    assert "Traceback" not in live.log_tail(20_000)


def test_a_restart_without_simsearch_index_keeps_each_gallerys_kind_and_a_given_one_rebuilds(
        hybrid1_artifact, tmp_path):
    env = _env(hybrid1_artifact, tmp_path)
    live = start_server({**env, "SIMSEARCH_INDEX": "hnsw"}, tmp_path)
    try:
        for gallery in ("default", "a"):
            assert httpx.post(live.url + "/index", params={"gallery": gallery}, files=[upload(png(1))],
                              data={"id": "one"}, headers=KEY, timeout=60).status_code == 201
    finally:
        stop_server(live)
    # Empty is "not given" (compose's ${SIMSEARCH_INDEX:-}), as leaving it out is
    live = start_server({**env, "SIMSEARCH_INDEX": ""}, tmp_path, log_name="unset.log")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.get("/readyz").json()["index"] == "hnsw"
            for gallery in ("default", "a"):
                listing = c.get("/index", params={"gallery": gallery}).json()
                assert (listing["index"], listing["count"]) == ("hnsw", 1), listing
                assert "HNSW" in listing["index_kind"], listing
        assert "rebuilding" not in live.log_tail(20_000)
    finally:
        stop_server(live)
    live = start_server({**env, "SIMSEARCH_INDEX": "flat"}, tmp_path, log_name="flat.log")   # asked: rebuilt
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.get("/readyz").json()["index"] == "flat"
            assert c.get("/index").json()["index"] == "flat" and _first(c, png(1)) == "one"
    finally:
        stop_server(live)
