"""A `where` on a metadata key that holds lists, over real HTTP to a `simsearch serve` process: /search,
GET /index and GET /facets match an item when any element of its list matches (docs/index.md "Filters")."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import png, upload

TAGS = [["red", "blue"], ["blue"], "red", [], ["green", "red", "red"], {"c": "red"}, None]


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("list_filters")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    yield server
    stop_server(server)


def test_a_where_on_tags_finds_the_items_whose_list_holds_the_value_in_search_listing_and_facets(live):
    metas = [{} if t is None else {"tags": t} for t in TAGS]
    with httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/index", files=[upload(png(i)) for i in range(len(TAGS))],
                   data={"id": [f"p{i}" for i in range(len(TAGS))], "metadata": [json.dumps(m) for m in metas]})
        assert r.status_code == 201, r.text
        for where, want in [({"tags": "red"}, ["p0", "p2", "p4"]),
                            ({"tags": {"$in": ["green", "blue"]}}, ["p0", "p1", "p4"]),
                            ({"tags": {"$ne": "red"}}, ["p1", "p3", "p5", "p6"]),
                            ({"tags": {"$gte": "r"}}, ["p0", "p2", "p4"])]:
            listed = c.get("/index", params={"where": json.dumps(where)})
            assert listed.status_code == 200, listed.text
            assert [it["id"] for it in listed.json()["items"]] == want, where
            found = c.post("/search", params={"k": 20, "where": json.dumps(where)}, files=[upload(png(0))])
            assert found.status_code == 200, found.text
            assert sorted(h["id"] for h in found.json()["results"]) == want, where
        facets = c.get("/facets", params={"field": "metadata.tags"}).json()
        assert [(v["value"], v["count"]) for v in facets["values"]] == [("red", 3), ("blue", 2), ("green", 1)]
        assert (facets["items"], facets["missing"], facets["not_scalar"]) == (7, 1, 2)   # [] and the object
