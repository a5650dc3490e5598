"""A gallery on a read-only disk served as it is (SIMSEARCH_READ_ONLY): searches, listings and
thumbnails over real HTTP, every write a 405 that says where writes go, nothing written to the disk;
without the setting the service says why it is not ready and what to set. The disk is a real tmpfs
in a user and mount namespace of the test's own, remounted read-only (tests/conftest.py's
private_disk); the server runs inside it (`nsenter`)."""
from __future__ import annotations

import subprocess

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

    # as a writer it cannot open the store there: not ready, saying what to set
    live = start_server(env, tmp_path, prefix=inside, log_name="refused.log", ready=False)
    try:
        r = httpx.get(live.url + "/readyz", timeout=10)
        assert r.status_code == 503 and "read-only" in r.text and "SIMSEARCH_READ_ONLY=true" in r.text, r.text
        assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_server(live)

    live = start_server({**env, "SIMSEARCH_READ_ONLY": "true"}, tmp_path, prefix=inside, log_name="reader.log")
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
                assert r.status_code == 405 and r.headers["allow"] == "GET", r.text
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
