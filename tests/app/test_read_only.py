"""Read-only serving (SIMSEARCH_READ_ONLY) over real HTTP: a gallery on a read-only disk served as it is
(searches, listings and thumbnails; every write a 405 that says where writes go; nothing written to the
disk; without the setting, the service says why it is not ready and what to set), and a read-only
replica beside the service that writes, following its writes. The read-only disk is a real tmpfs in a
user and mount namespace of the test's own, remounted read-only (tests/conftest.py's private_disk);
the server runs inside it (`nsenter`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx

from .conftest import start_server, stop_server
from .test_api import png, upload


def test_a_gallery_on_a_read_only_disk_is_served_read_only_and_refuses_writes_with_405(
        hybrid1_artifact, tmp_path, private_disk):
    mount, inside = private_disk
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(mount / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": "ro-key"}
    key = {"X-API-Key": "ro-key"}
    ids = [f"g{i}" for i in range(6)]
    live = start_server(env, tmp_path, prefix=inside, log_name="writer.log")
    try:
        r = httpx.post(live.url + "/index", files=[upload(png(i)) for i in range(6)], data={"id": ids},
                       headers=key, timeout=60)
        assert r.status_code == 201, r.text
    finally:
        stop_server(live)
    r = subprocess.run([*inside, "mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listing = subprocess.run([*inside, "ls", "-l", "--time-style=+%s.%N", str(mount / "data" / "index")],
                             capture_output=True, text=True).stdout

    # as a writer it cannot open the store there: one line at start, saying what to set (it answered /healthz and
    # stayed not ready before the fifty-third session)
    refused = subprocess.run([*inside, sys.executable, "-m", "cli", "serve", "--port", "0"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"SIMSEARCH_DATA_DIR (--data) '{mount / 'data'}' is on a read-only disk: serve its galleries read-only " \
           "(SIMSEARCH_READ_ONLY=true" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    live = start_server(env, tmp_path, args=["--read-only"], prefix=inside, log_name="reader.log")
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.get("/readyz").json()["read_only"] is True
            hits = c.post("/search?k=1", files=[upload(png(3))]).json()["results"]
            assert hits[0]["id"] == "g3" and hits[0]["score"] > 0.999
            batch = c.post("/batch/search?k=1", files=[upload(png(i), f"{i}.png") for i in (5, 0)]).json()
            assert [q["results"][0]["id"] for q in batch["queries"]] == ["g5", "g0"]
            assert [it["id"] for it in c.get("/index").json()["items"]] == ids
            assert c.get("/index/g2/thumbnail").headers["content-type"] == "image/jpeg"
            for r in (c.post("/index", files=[upload(png(9))], data={"id": "new"}, headers=key),
                      c.patch("/index/g1", json={"label": "x"}, headers=key),
                      c.delete("/index/g1", headers=key),
                      c.delete("/index", params={"label": "none"}, headers=key)):
                assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", r.text
                err = r.json()["error"]
                assert err["code"] == "read_only" and "SIMSEARCH_READ_ONLY" in err["message"]
            assert c.post("/index", files=[upload(png(9))]).status_code == 401  # the key is still asked first
            assert c.get("/index").json()["count"] == 6 and c.get("/index/g1").json()["label"] is None
    finally:
        stop_server(live)
    assert "Traceback" not in live.log_tail(20_000) and "ERROR" not in live.log_tail(20_000)
    after = subprocess.run([*inside, "ls", "-l", "--time-style=+%s.%N", str(mount / "data" / "index")],
                           capture_output=True, text=True).stdout
    assert after == listing   # not a byte written: the same files, sizes and times


def test_a_read_only_replica_beside_the_writer_follows_its_writes(hybrid1_artifact, tmp_path):
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": "w-key"}
    key = {"X-API-Key": "w-key"}
    # started first, as a container may be: it waits for the writer to create the store
    replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true", "SIMSEARCH_REFRESH_SECONDS": "0.2"},
                           tmp_path, log_name="replica.log", ready=False)
    writer = None
    try:
        r = httpx.get(replica.url + "/readyz", timeout=10)
        assert r.status_code == 503 and "waiting for the service that writes to create the store" in r.text, r.text
        writer = start_server(env, tmp_path, log_name="writer.log")
        with httpx.Client(base_url=writer.url, timeout=60, headers=key) as w:
            assert w.post("/index", files=[upload(png(i)) for i in range(4)], data={"id": ["a", "b", "c", "d"]}
                          ).status_code == 201
            with httpx.Client(base_url=replica.url, timeout=60) as r:
                deadline = time.monotonic() + 30
                while r.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
                deadline = time.monotonic() + 10
                while r.get("/index").json()["count"] != 4 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert r.get("/index").json()["count"] == 4
                assert w.post("/index", files=[upload(png(i)) for i in (10, 11)], data={"id": ["e", "f"]}
                              ).status_code == 201
                assert w.delete("/index/b").status_code == 204
                assert w.patch("/index/c", json={"label": "edited", "metadata": {"n": 1}}).status_code == 200
                deadline = time.monotonic() + 20
                while r.get("/index").json()["count"] != 5 and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)   # one more refresh: the three writes may have been read in two
                listing = r.get("/index").json()
                assert [it["id"] for it in listing["items"]] == ["a", "c", "d", "e", "f"]
                assert listing["items"][1] == {"id": "c", "label": "edited", "metadata": {"n": 1}}
                assert r.post("/search?k=1", files=[upload(png(11))]).json()["results"][0]["id"] == "f"
                assert r.post("/search?k=5", params={"label": "edited"}, files=[upload(png(1))]
                              ).json()["results"][0]["id"] == "c"
                assert r.get("/index/b").status_code == 404
                assert r.get("/index/e/thumbnail").status_code == 200
                assert r.post("/index", files=[upload(png(12))], headers=key).status_code == 405
                # an operator can alert on a replica that stops following
                metrics = r.get("/metrics").text
                followed = float(re.search(r"^simsearch_index_followed_timestamp_seconds (\S+)$", metrics, re.M)[1])
                assert time.time() - 5 < followed <= time.time()
                assert re.search(r"^simsearch_index_follow_errors_total 0\.0$", metrics, re.M)
    finally:
        stop_server(replica)
        if writer is not None:
            stop_server(writer)
    log = replica.log_tail(20_000)
    assert "Traceback" not in log and "ERROR" not in log


def test_a_read_sent_with_a_writes_position_sees_that_write_on_a_replica_that_has_not_refreshed_yet(
        hybrid1_artifact, tmp_path):
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    writer = start_server(env, tmp_path, log_name="writer.log")
    replica = None
    try:
        with httpx.Client(base_url=writer.url, timeout=60) as w:
            r = w.post("/index", files=[upload(png(i)) for i in range(3)], data={"id": ["a", "b", "c"]})
            assert r.status_code == 201 and r.headers["x-simsearch-position"] == "3.0", r.headers
            # a replica that reads the writer's changes only when asked to (an hour between refreshes)
            replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true", "SIMSEARCH_REFRESH_SECONDS": "3600"},
                                   tmp_path, log_name="replica.log")
            with httpx.Client(base_url=replica.url, timeout=60) as r_:
                listing = r_.get("/index").json()
                assert listing["count"] == 3 and listing["position"] == "3.0"

                added = w.post("/index", files=[upload(png(7))], data={"id": "new", "label": "x"})
                after = {"X-Simsearch-After": added.headers["x-simsearch-position"]}
                assert r_.post("/search?k=1", files=[upload(png(7))]).json()["results"][0]["id"] != "new"
                hit = r_.post("/search?k=1", files=[upload(png(7))], headers=after).json()["results"][0]
                assert hit["id"] == "new" and hit["score"] > 0.999
                edited = w.patch("/index/new", json={"label": "y"})
                after = {"X-Simsearch-After": edited.headers["x-simsearch-position"]}
                assert r_.post("/search?label=y", files=[upload(png(7))]).json()["results"] == []   # as last read
                assert [h["id"] for h in r_.post("/search?label=y", files=[upload(png(7))], headers=after
                                                 ).json()["results"]] == ["new"]
                deleted = w.delete("/index/a")
                assert deleted.status_code == 204
                after = {"X-Simsearch-After": deleted.headers["x-simsearch-position"]}
                assert r_.post("/search?k=1", files=[upload(png(0))]).json()["results"][0]["id"] == "a"
                assert r_.post("/search?k=1", files=[upload(png(0))], headers=after).json()["results"][0]["id"] != "a"
                assert r_.get("/index/a", headers=after).status_code == 404
                for path, kw in (("/classify", {"files": [upload(png(7))]}), ("/batch/search", {"files": [upload(png(7))]}),
                                 ("/search/b", {})):
                    assert r_.post(path, headers=after, **kw).status_code == 200, path
                listing = r_.get("/index", headers=after).json()
                assert listing["count"] == 3 and listing["position"] == deleted.headers["x-simsearch-position"]
                gone = w.delete("/index", params={"label": "y"})
                assert gone.json()["deleted"] == 1
                assert r_.get("/index", headers={"X-Simsearch-After": gone.headers["x-simsearch-position"]}
                              ).json()["count"] == 2

                bad = r_.get("/index", headers={"X-Simsearch-After": "yesterday"})
                assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_position"
                assert "yesterday" in bad.json()["error"]["message"]
                too_long = r_.get("/index", headers={"X-Simsearch-After": "9" * 70 + ".1"})   # was a 422 by length
                assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_position"
                ahead = r_.post("/search", files=[upload(png(1))], headers={"X-Simsearch-After": "99.0"})
                assert ahead.status_code == 409 and ahead.json()["error"]["code"] == "position_ahead"
                assert "99.0" in ahead.json()["error"]["message"] and "6.1" in ahead.json()["error"]["message"]
                assert r_.get("/readyz").status_code == 200   # and it keeps serving
                # the four writes above each read on demand once (the reads after a first share it), and 99.0 tried once
                metrics = r_.get("/metrics").text
                assert re.search(r"^simsearch_index_catch_ups_total 5\.0$", metrics, re.M), metrics[-2000:]
            assert w.get("/index", headers={"X-Simsearch-After": "6.1"}).json()["position"] == "6.1"
            assert w.get("/index", headers={"X-Simsearch-After": "6.2"}).status_code == 409
    finally:
        if replica is not None:
            stop_server(replica)
        stop_server(writer)
    for server in (writer, replica):
        assert "Traceback" not in server.log_tail(20_000)
