"""Over real HTTP: a read-only replica (SIMSEARCH_READ_ONLY, beside the service that writes) drops an item the
writer replaced (posted again) and then deleted before the replica read either change."""
from __future__ import annotations

import httpx

from .conftest import start_server, stop_server
from .test_api import png, upload


def test_an_item_posted_again_then_deleted_is_gone_from_a_replica_that_read_neither(hybrid1_artifact, tmp_path):
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    writer = start_server(env, tmp_path, log_name="writer.log")
    replica = None
    try:
        with httpx.Client(base_url=writer.url, timeout=60) as w:
            assert w.post("/index", files=[upload(png(i)) for i in range(3)], data={"id": ["a", "b", "ghost"]}
                          ).status_code == 201
            # a replica that reads the writer's changes only when a request asks it to (an hour between refreshes)
            replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true", "SIMSEARCH_REFRESH_SECONDS": "3600"},
                                   tmp_path, log_name="replica.log")
            with httpx.Client(base_url=replica.url, timeout=60) as r:
                assert r.get("/index").json()["count"] == 3
                assert w.post("/index", files=[upload(png(7))], data={"id": "ghost"}).status_code == 201   # replaced
                deleted = w.delete("/index/ghost")
                assert deleted.status_code == 204
                after = {"X-Simsearch-After": deleted.headers["x-simsearch-position"]}

                listing = r.get("/index", headers=after).json()
                assert listing["count"] == 2 and listing["position"] == deleted.headers["x-simsearch-position"]
                for seed in (2, 7):   # the first version's image, and the second's
                    hits = r.post("/search?k=5", files=[upload(png(seed))]).json()["results"]
                    assert [h["id"] for h in hits if h["id"] == "ghost"] == [], hits
                found = r.get("/index", params={"where": "{\"n\": {\"$exists\": false}}", "limit": 0}).json()
                assert found["matching"] == 2, found
    finally:
        if replica is not None:
            stop_server(replica)
        stop_server(writer)
    log = replica.log_tail(20_000)
    assert "Traceback" not in log and "ERROR" not in log
