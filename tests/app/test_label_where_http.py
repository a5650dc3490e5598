"""The label inside `where` ("$label") over real HTTP to a `simsearch serve` process: POST /search, GET /index,
GET /facets and DELETE /index select by the items' labels (docs/index.md "Filters"), and a metadata key that
starts with "$" is refused with a 422 naming it, on upload and on PATCH."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("label_where")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    yield server
    stop_server(server)


def _where(where: dict) -> dict:
    return {"where": json.dumps(where)}


def test_a_where_on_the_label_selects_items_in_search_listing_facets_and_delete(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/index", files=[upload(png(i)) for i in range(3)],
                   data={"id": ["p0", "p1", "p2"], "label": ["cat", "dog", "cat"],
                         "metadata": [json.dumps({"year": y}) for y in (2023, 2024, 2025)]})
        assert r.status_code == 201, r.text
        r = c.post("/index", files=[upload(png(3))], data={"id": "u", "metadata": json.dumps({"year": 2024})})
        assert r.status_code == 201, r.text   # unlabelled
        for where, want in [({"$label": "cat"}, ["p0", "p2"]),
                            ({"$label": {"$in": ["cat", "dog"]}}, ["p0", "p1", "p2"]),
                            ({"$label": {"$ne": "cat"}}, ["p1", "u"]),
                            ({"$label": {"$exists": False}}, ["u"]),
                            ({"$or": [{"$label": "dog"}, {"year": {"$gte": 2025}}]}, ["p1", "p2"])]:
            found = c.post("/search", params={"k": 20, **_where(where)}, files=[upload(png(0))])
            assert found.status_code == 200, found.text
            assert sorted(h["id"] for h in found.json()["results"]) == want, where
            listed = c.get("/index", params=_where(where))
            assert listed.status_code == 200, listed.text
            assert [it["id"] for it in listed.json()["items"]] == want, where
        both = c.post("/search", params={"k": 20, "label": "cat", **_where({"$label": {"$ne": "cat"}})},
                      files=[upload(png(0))])
        assert both.status_code == 200 and both.json()["results"] == [], both.text   # label= and where: both hold
        facets = c.get("/facets", params={"field": "metadata.year", **_where({"$label": {"$nin": ["dog"]}})}).json()
        assert (facets["items"], sorted((v["value"], v["count"]) for v in facets["values"])) == \
            (3, [(2023, 1), (2024, 1), (2025, 1)])
        gone = c.delete("/index", params=_where({"$label": {"$exists": False}}))
        assert gone.status_code == 200 and gone.json()["deleted"] == 1, gone.text
        assert [it["id"] for it in c.get("/index").json()["items"]] == ["p0", "p1", "p2"]
        assert_error(c.post("/search", params=_where({"$label": 5}), files=[upload(png(0))]), 422,
                     "invalid_parameter", "'$label'", "must be a string")


def test_a_metadata_key_starting_with_dollar_is_refused_on_upload_and_on_patch(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        refused = c.post("/index", files=[upload(png(7))], data={"id": "d", "metadata": json.dumps({"$label": "x"})})
        assert_error(refused, 422, "invalid_metadata", "'$label'", 'starts with "$"')
        assert c.get("/index/d").status_code == 404
        r = c.post("/index", files=[upload(png(8))], data={"id": "e", "metadata": json.dumps({"n": 1})})
        assert r.status_code == 201, r.text
        assert_error(c.patch("/index/e", json={"metadata": {"$x": 1}}), 422, "invalid_metadata", "'$x'")
        assert c.get("/index/e").json()["metadata"] == {"n": 1}
