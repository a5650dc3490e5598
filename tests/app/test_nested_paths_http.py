"""Dotted paths into nested metadata over real HTTP to a `simsearch serve` process: POST /index with nested
metadata, then /search?where= on a path, GET /facets?field=metadata.cam.make and group_by=metadata.cam.make
read the nested values (docs/index.md "Filters"); a metadata key with a dot is a 422 naming it."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("nested_paths")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    yield server
    stop_server(server)


_METAS = {"p0": {"cam": {"make": "Canon", "iso": 100}}, "p1": {"cam": {"make": "Nikon", "iso": 400}},
          "p2": {"cam": {"make": "Canon", "iso": 800}}, "p3": {"cam": "Canon"}, "p4": {"make": "Canon"}}


def test_nested_metadata_is_searched_faceted_and_grouped_by_a_dotted_path(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        ids = list(_METAS)
        r = c.post("/index", files=[upload(png(i)) for i in range(len(ids))],
                   data={"id": ids, "metadata": [json.dumps(_METAS[i]) for i in ids]})
        assert r.status_code == 201, r.text
        assert c.get("/index/p0").json()["metadata"] == _METAS["p0"]
        for where, want in [({"cam.make": "Canon"}, ["p0", "p2"]), ({"cam.iso": {"$gte": 200}}, ["p1", "p2"]),
                            ({"cam.make": {"$ne": "Canon"}}, ["p1", "p3", "p4"]),
                            ({"$or": [{"cam.make": "Nikon"}, {"make": "Canon"}]}, ["p1", "p4"])]:
            found = c.post("/search", params={"k": 20, "where": json.dumps(where)}, files=[upload(png(0))])
            assert found.status_code == 200, found.text
            assert sorted(h["id"] for h in found.json()["results"]) == want, where
        facets = c.get("/facets", params={"field": "metadata.cam.make"}).json()
        assert (facets["items"], [(v["value"], v["count"]) for v in facets["values"]], facets["missing"]) == \
            (5, [("Canon", 2), ("Nikon", 1)], 2)
        grouped = c.post("/search", params={"k": 5, "group_by": "metadata.cam.make", "group_size": 3},
                         files=[upload(png(0))])
        assert grouped.status_code == 200, grouped.text
        assert sorted((g["value"], sorted(h["id"] for h in g["results"])) for g in grouped.json()["groups"]) == \
            [("Canon", ["p0", "p2"]), ("Nikon", ["p1"])]
        refused = c.post("/index", files=[upload(png(9))], data={"id": "d", "metadata": json.dumps({"cam.make": "x"})})
        assert_error(refused, 422, "invalid_metadata", "'cam.make'", 'holds a "."')
        assert c.get("/index/d").status_code == 404
