"""A JSON object that gives one key twice is refused with a 422 naming the key, over real HTTP to a `simsearch serve`
process: a JSON parser keeps the last value, so {"n": {"$gte": 25}, "n": {"$lt": 5}} would filter on n < 5 alone and
a DELETE by it would remove items the filter was written to keep."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload

_TWICE = '{"n": {"$gte": 25}, "n": {"$lt": 5}}'


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("repeated_keys")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/index", files=[upload(png(i)) for i in range(4)],
                   data={"id": [f"p{i}" for i in range(4)], "metadata": [json.dumps({"n": i}) for i in range(4)]})
        assert r.status_code == 201, r.text
    yield server
    stop_server(server)


def test_a_where_giving_a_key_twice_is_refused_by_search_listing_and_delete_and_deletes_nothing(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for r in (c.post("/search", params={"where": _TWICE}, files=[upload(png(0))]),
                  c.get("/index", params={"where": _TWICE}),
                  c.delete("/index", params={"where": _TWICE})):
            assert_error(r, 422, "invalid_parameter", "'n' twice", "$and")
        assert [it["id"] for it in c.get("/index").json()["items"]] == ["p0", "p1", "p2", "p3"]
        # one key with two operators in one object is the way to say both
        both = c.get("/index", params={"where": '{"n": {"$gte": 1, "$lt": 3}}'})
        assert [it["id"] for it in both.json()["items"]] == ["p1", "p2"]


def test_metadata_giving_a_key_twice_is_refused_on_upload_and_on_patch(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        assert_error(c.post("/index", files=[upload(png(9))], data={"id": "x", "metadata": '{"a": 1, "a": 2}'}),
                     422, "invalid_metadata", "'a' twice")
        assert c.get("/index/x").status_code == 404
        assert_error(c.patch("/index/p0", content=b'{"metadata": {"b": 1, "b": 2}}',
                             headers={"content-type": "application/json"}), 422, "invalid_metadata", "'b' twice")
        assert c.get("/index/p0").json()["metadata"] == {"n": 0}
        twice = c.patch("/index/p0", content=b'{"label": "x", "label": "y"}',
                        headers={"content-type": "application/json"})
        assert_error(twice, 422, "invalid_metadata", "'label' twice")
        assert "$and" not in twice.json()["error"]["message"]   # the hint for filters is for filters
