"""PATCH /index?label=...&where=... over real HTTP to a `simsearch serve` process: every item the filters select
gets the body's label and/or metadata merge patch (as PATCH /index/{id} gives one item), found at once by a
filter on the new values; refused whole, naming the item, when one item's patched metadata would be too large;
refused without a selection, without the write key, on a read-only service, and for an unknown gallery (which
it never makes)."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload

KEY = "update-where-key"


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("update_where")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        r = c.post("/index", files=[upload(png(i)) for i in range(4)],
                   data={"id": ["p0", "p1", "p2", "p3"], "label": ["cat", "dog", "cat", ""],
                         "metadata": [json.dumps(m) for m in ({"year": 2023, "tags": ["pet", "indoor"]},
                                                             {"year": 2024, "tags": ["pet"]},
                                                             {"year": 2025, "tags": ["wild"]},
                                                             {"year": 2023, "notes": "x" * 60_000})]})
        assert r.status_code == 201, r.text
    yield server
    stop_server(server)


def _items(c: httpx.Client, **params) -> dict[str, tuple]:
    r = c.get("/index", params=params)
    assert r.status_code == 200, r.text
    return {it["id"]: (it["label"], {k: v for k, v in it["metadata"].items() if k != "notes"})
            for it in r.json()["items"]}


def _where(where: dict) -> dict:
    return {"where": json.dumps(where)}


def test_a_patch_by_filter_changes_the_matching_items_and_a_filter_on_the_new_values_finds_them(live):
    with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        before = _items(c)
        r = c.patch("/index", params=_where({"tags": "pet"}), json={"metadata": {"album": "pets", "year": None}})
        assert r.status_code == 200 and r.json() == {"updated": 2}, r.text
        assert re.fullmatch(r"[0-9]+\.[0-9]+", r.headers["x-simsearch-position"])
        assert _items(c, **_where({"album": "pets"})) == {"p0": ("cat", {"tags": ["pet", "indoor"], "album": "pets"}),
                                                          "p1": ("dog", {"tags": ["pet"], "album": "pets"})}
        assert {k: v for k, v in _items(c).items() if k not in ("p0", "p1")} == \
            {k: v for k, v in before.items() if k not in ("p0", "p1")}   # the others as they were
        # the label, selected by "$label" in where, as application/merge-patch+json
        r = c.patch("/index", params=_where({"$label": "cat", "year": {"$gte": 2025}}), content=b'{"label": "lynx"}',
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200 and r.json() == {"updated": 1}, r.text
        assert list(_items(c, **_where({"$label": "lynx"}))) == ["p2"]
        found = c.post("/search", params={"k": 10, **_where({"$label": "lynx"})}, files=[upload(png(2))])
        assert [h["id"] for h in found.json()["results"]] == ["p2"], found.text
        # label= selects; a label of null removes it
        r = c.patch("/index", params={"label": "dog"}, json={"label": None, "metadata": {"was": "dog"}})
        assert r.status_code == 200 and r.json() == {"updated": 1}, r.text
        assert _items(c, **_where({"was": "dog"})) == {"p1": (None, {"tags": ["pet"], "album": "pets",
                                                                     "was": "dog"})}
        r = c.patch("/index", params={"label": "nobody"}, json={"label": "x"})
        assert r.status_code == 200 and r.json() == {"updated": 0}, r.text


def test_one_item_whose_patched_metadata_would_be_too_large_refuses_the_patch_and_nothing_changes(live):
    with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        before = _items(c)
        assert_error(c.patch("/index", params=_where({"$or": [{"year": 2023}, {"tags": "wild"}]}),
                             json={"metadata": {"more": "y" * 6000}}),
                     422, "invalid_metadata", "item 'p3'", "bytes of JSON")
        assert _items(c) == before


def test_a_patch_without_a_selection_or_with_a_bad_one_or_bad_body_is_refused_naming_it(live):
    with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        before = _items(c)
        assert_error(c.patch("/index", json={"label": "x"}), 422, "invalid_parameter", "needs label or where")
        assert_error(c.patch("/index", params={"where": "{}"}, json={"label": "x"}), 422, "invalid_parameter",
                     "non-empty object")
        assert_error(c.patch("/index", params={"where": '{"year": '}, json={"label": "x"}), 422,
                     "invalid_parameter", "where='{\"year\": '")
        assert_error(c.patch("/index", params={"label": "cat"}, json={}), 422, "invalid_metadata", "nothing to change")
        assert_error(c.patch("/index", params={"label": "cat"}, json={"metadata": {"$x": 1}}), 422,
                     "invalid_metadata", "'$x'")
        assert_error(c.patch("/index", params={"label": "cat"}, json={"label": 5}), 422, "invalid_label", "5")
        assert_error(c.patch("/index", params={"label": "cat"}, content=b"label=x",
                             headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type", "text/plain")
        assert _items(c) == before
        # PATCH /index/ (an empty id) is PATCH /index/{id}'s, as before there was PATCH /index
        assert_error(c.patch("/index/", json={"label": "x"}), 422, "invalid_id")
        assert_error(c.patch("/index/", params={"label": "cat"}, json={"label": "x"}), 422, "invalid_parameter",
                     "PATCH /index/{id} takes no query parameter 'label'")


def test_a_patch_by_filter_needs_the_write_key_and_never_makes_a_gallery(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        assert_error(c.patch("/index", params={"label": "cat"}, json={"label": "x"}), 401, "missing_api_key")
        assert_error(c.patch("/index", params={"label": "cat", "gallery": "nope"}, json={"label": "x"},
                             headers={"X-API-Key": KEY}), 404, "gallery_not_found", "'nope'")
        assert "nope" not in [g["name"] for g in c.get("/galleries").json()["galleries"]]
        assert c.get("/index", params={"gallery": "nope"}).status_code == 404


def test_a_read_only_service_refuses_a_patch_by_filter_with_405(live, hybrid1_artifact):
    work = live.log.parent / "read-only"
    work.mkdir(exist_ok=True)
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact),
                           "SIMSEARCH_DATA_DIR": str(live.log.parent / "data"), "SIMSEARCH_READ_ONLY": "true",
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    try:
        r = httpx.patch(server.url + "/index", params={"label": "cat"}, json={"label": "x"})
        assert_error(r, 405, "read_only")
        assert r.headers["allow"] == "GET, HEAD"
    finally:
        stop_server(server)
