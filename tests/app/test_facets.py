"""GET /facets: how the gallery's items spread over a label's or a metadata key's values, under the
search filters, exactly as the items sent were labelled and tagged; wrong fields are 422s that name them."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from .conftest import running
from .test_api import assert_error, png, still_serving, upload

pytestmark = pytest.mark.anyio

ALBUMS = ["trip", "home", "trip", "work", "trip", None, "home", "trip", 2024, 2024.0, ["x"]]


async def test_facets_count_the_items_by_label_and_metadata_value_under_the_filters(make_settings):
    async with running(make_settings()) as c:
        labels = [f"c{i % 3}" if i % 4 else None for i in range(len(ALBUMS))]
        metas = [{} if a is None else {"album": a, "n": i} for i, a in enumerate(ALBUMS)]
        data = {"id": [f"p{i}" for i in range(len(ALBUMS))], "metadata": [json.dumps(m) for m in metas]}
        data["label"] = [lb or "" for lb in labels]
        r = await c.post("/index", files=[upload(png(i)) for i in range(len(ALBUMS))], data=data)
        assert r.status_code == 201, r.text
        stored = {it["id"]: it for it in (await c.get("/index")).json()["items"]}

        got = (await c.get("/facets?field=label")).json()
        want = Counter(it["label"] for it in stored.values() if it["label"])
        assert [(v["value"], v["count"]) for v in got["values"]] == sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))
        assert got["items"] == len(ALBUMS) and got["missing"] == sum(it["label"] is None for it in stored.values())

        albums = (await c.get("/facets", params={"field": "metadata.album", "limit": 2})).json()
        assert albums["values"] == [{"value": "trip", "count": 4}, {"value": 2024, "count": 2}]
        # ["x"] counts under its element "x" (docs/index.md "Lists")
        assert (albums["distinct"], albums["others"], albums["missing"], albums["not_scalar"]) == (5, 4, 1, 0)
        # under a label filter and a metadata filter, as a search would be
        c1 = [it for it in stored.values() if it["label"] == "c1"]
        got = (await c.get("/facets", params={"field": "metadata.album", "label": "c1"})).json()
        assert got["items"] == len(c1)
        assert sum(v["count"] for v in got["values"]) + got["missing"] + got["not_scalar"] == len(c1)
        got = (await c.get("/facets", params={"field": "label", "where": json.dumps({"n": {"$lt": 5}})})).json()
        assert got["items"] == 5 - sum(1 for i in range(5) if ALBUMS[i] is None)

        assert_error(await c.get("/facets?field=album"), 422, "invalid_parameter", "field='album'", "metadata.KEY")
        assert (await c.get("/facets")).status_code == 422   # no field at all
        assert_error(await c.get("/facets?field=label&where=%7Bnope"), 422, "invalid_parameter")
        assert_error(await c.get("/facets?field=label&gallery=nosuch"), 404, "gallery_not_found")
        await still_serving(c)
