"""POST /batch/search by stored ids: a JSON body {"ids": [...]} searches with each item's stored vector, each answer
what POST /search/{id} gives for that item (itself excluded), in the order sent, over a real `simsearch serve`; an
id the gallery does not hold is a 404 naming it, and more ids than SIMSEARCH_MAX_FILES_PER_REQUEST a 413."""
from __future__ import annotations

import httpx
import pytest

from .test_api import assert_error, png, upload

GALLERY = "batch-ids"
IDS = [f"b{seed}" for seed in range(1, 9)]
LABELS = ["cat", "dog"] * 4


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": server.key}) as c:
        r = c.post("/index", params={"gallery": GALLERY}, data={"id": IDS, "label": LABELS},
                   files=[upload(png(seed)) for seed in range(1, 9)])
        assert r.status_code == 201, r.text
        yield c


def _by_id(client, id_: str, **params) -> dict:
    r = client.post(f"/search/{id_}", params={"gallery": GALLERY, **params})
    assert r.status_code == 200, r.text
    return r.json()


def _batch(client, ids: list[str], **params) -> httpx.Response:
    return client.post("/batch/search", params={"gallery": GALLERY, **params}, json={"ids": ids})


@pytest.mark.parametrize("params", [
    {"k": 3},
    {"k": 2, "offset": 1, "exclude": "b5"},
    {"k": 4, "label": "dog", "vote": "true"},
    {"k": 2, "like": "b8", "unlike": "b7"},
    {"k": 2, "group_by": "label", "group_size": 2},
    {"k": 8, "min_score": 0.5},
], ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_each_id_gets_what_search_by_that_id_answers_in_the_order_sent(client, params):
    ids = ["b3", "b1", "b6", "b3"]   # an id twice: two queries, as two equal vectors would be
    r = _batch(client, ids, **params)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [q["name"] for q in answer["queries"]] == ids
    for id_, got in zip(ids, answer["queries"]):
        want = _by_id(client, id_, **params)
        assert [h["id"] for h in got["results"]] == [h["id"] for h in want["results"]], (id_, got, want)
        assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in want["results"]], abs=1e-6)
        assert id_ not in {h["id"] for h in got["results"]}
        assert got.get("vote") == want.get("vote")
        assert [g["value"] for g in got.get("groups") or []] == [g["value"] for g in want.get("groups") or []]
    assert answer["k"] == params["k"] and answer["offset"] == params.get("offset", 0)


def test_the_query_item_itself_is_never_among_its_results(client):
    r = _batch(client, IDS, k=len(IDS))
    assert r.status_code == 200, r.text
    for id_, got in zip(IDS, r.json()["queries"]):
        assert sorted(h["id"] for h in got["results"]) == sorted(set(IDS) - {id_})


def test_an_id_the_gallery_does_not_hold_is_a_404_naming_it(client):
    assert_error(_batch(client, ["b1", "nope"]), 404, "not_found", "no item with id 'nope' in the gallery")
    assert_error(_batch(client, ["x1", "b2", "x2"]), 404, "not_found", "no items with ids ['x1', 'x2']")


def test_more_ids_than_a_batch_takes_is_a_413(client):
    ids = ["b1"] * 65   # the server's SIMSEARCH_MAX_FILES_PER_REQUEST: the default, 64
    assert_error(_batch(client, ids), 413, "too_many_ids", "65 ids in one request; at most 64")
    assert _batch(client, ids[:64]).status_code == 200


@pytest.mark.parametrize("body, status, code, said", [
    ({"ids": []}, 422, "invalid_parameter", "ids must be a non-empty list"),
    ({"ids": "b1"}, 422, "invalid_parameter", "ids must be a non-empty list"),
    ({"ids": ["b1", 2]}, 422, "invalid_id", "ids[1] must be a string, got 2"),
    ({"ids": ["a/../b"]}, 422, "invalid_id", "id 'a/../b' is not valid"),
    ({"ids": ["b1"], "model": "x@y"}, 422, "invalid_parameter", 'must be {"ids": [...]} and nothing else'),
    ({"ids": ["b1"], "vectors": [[1.0]]}, 422, "invalid_parameter", 'must be {"ids": [...]} and nothing else'),
    ({"id": ["b1"]}, 422, "invalid_vector", 'or {"ids": [...]}'),
], ids=lambda v: str(v)[:30] if not isinstance(v, int) else str(v))
def test_a_wrong_ids_body_is_refused_naming_what_is_wrong(client, body, status, code, said):
    r = client.post("/batch/search", params={"gallery": GALLERY}, json=body)
    assert_error(r, status, code, said)


def test_crop_is_for_images_and_refused_with_ids(client):
    r = _batch(client, ["b1"], crop="0,0,0.5,0.5")
    assert_error(r, 422, "invalid_parameter", "crop is a region of an image")


def test_openapi_describes_the_ids_body(client):
    op = client.get("/openapi.json").json()["paths"]["/batch/search"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert [sorted(s["properties"]) for s in schema["oneOf"]] == [["model", "vectors"], ["ids"]]
    assert '{"ids": [...]}' in op["requestBody"]["description"]
