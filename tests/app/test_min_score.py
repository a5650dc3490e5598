"""min_score: the cosine cut beside max_distance on every route that takes max_distance (POST /search,
/search/{id}, /batch/search, /classify), over a real `simsearch serve`. A hit whose returned score is sent back as
min_score is kept (the cut is max_distance = sqrt(2 - 2 min_score), computed as the index computes a hit's
distance), both cuts at once are a 422 naming both, and /openapi.json lists it with its bounds."""
from __future__ import annotations

import math

import httpx
import pytest

from .test_api import assert_error, png, upload

GALLERY = "min-score"
IDS = [f"m{seed}" for seed in range(1, 9)]
ROUTES = ("/search", "/search/m1", "/batch/search", "/classify")


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": server.key}) as c:
        yield c


@pytest.fixture(scope="module")
def query(client) -> list[float]:
    """A gallery of 8 items of this module's own; the query: item m1's stored vector."""
    r = client.post("/index", params={"gallery": GALLERY}, data={"id": IDS},
                    files=[upload(png(seed)) for seed in range(1, 9)])
    assert r.status_code == 201, r.text
    r = client.get("/index/m1", params={"gallery": GALLERY, "vector": "true"})
    assert r.status_code == 200, r.text
    return r.json()["vector"]


def _hits(client, route: str, vector: list[float], **params) -> list[dict]:
    """The hits one route answers for the query (m1: its vector, or the item itself on /search/m1)."""
    params = {"gallery": GALLERY, "k": 8, **params}
    body = None if route.startswith("/search/") else {"vectors": [vector]} if route == "/batch/search" \
        else {"vector": vector}
    r = client.post(route, params=params, json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    return answer["queries"][0]["results"] if route == "/batch/search" else answer["results"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_hit_whose_score_is_sent_back_as_min_score_is_kept_and_those_below_it_are_not(client, query, route):
    every = _hits(client, route, query)
    assert len(every) >= 7 and len({h["score"] for h in every}) == len(every), every
    for i, hit in enumerate(every):
        kept = _hits(client, route, query, min_score=hit["score"])   # the score as the answer said it
        assert [h["id"] for h in kept] == [h["id"] for h in every[:i + 1]], (hit, kept)
        assert kept[-1]["score"] == hit["score"]


@pytest.mark.parametrize("route", ROUTES)
def test_min_score_is_the_same_cut_as_its_max_distance(client, query, route):
    every = _hits(client, route, query)
    middle = (every[2]["score"] + every[3]["score"]) / 2
    by_score = _hits(client, route, query, min_score=middle)
    assert [h["id"] for h in by_score] == [h["id"] for h in every[:3]]
    assert by_score == _hits(client, route, query, max_distance=math.sqrt(2 - 2 * middle))
    assert all(h["score"] >= middle for h in by_score)


@pytest.mark.parametrize("route", ROUTES)
def test_min_score_minus_one_keeps_every_item_and_one_keeps_none_but_an_exact_copy(client, query, route):
    every = _hits(client, route, query)
    assert _hits(client, route, query, min_score=-1) == every
    # m1's own vector is the query: m1 (itself excluded on /search/m1) is the only copy, kept when float32 rounding
    # gives it a score of 1
    copies = _hits(client, route, query, min_score=1)
    assert {h["id"] for h in copies} <= ({"m1"} if route != "/search/m1" else set())
    assert all(h["score"] == 1.0 for h in copies)


@pytest.mark.parametrize("route", ROUTES)
def test_min_score_and_max_distance_together_are_refused_naming_both(client, route):
    r = client.post(route, params={"gallery": GALLERY, "min_score": 0.5, "max_distance": 0.8},
                    files=None if route.startswith("/search/") else [upload(png(1))])
    assert_error(r, 422, "invalid_parameter", "max_distance=0.8 and min_score=0.5 are one cut in two units",
                 "keep one")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value, said", [("1.5", "less than or equal to 1"), ("-1.01", "greater than or equal to -1"),
                                         ("nan", "finite number"), ("high", "valid number")])
def test_a_min_score_outside_minus_one_to_one_or_not_a_number_is_refused(client, route, value, said):
    r = client.post(route, params={"gallery": GALLERY, "min_score": value},
                    files=None if route.startswith("/search/") else [upload(png(1))])
    assert_error(r, 422, "invalid_parameter", "min_score", said)


def test_openapi_lists_min_score_with_its_bounds_wherever_it_lists_max_distance(client):
    spec = client.get("/openapi.json").json()
    found = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
            if "max_distance" in params:
                found[f"{method.upper()} {path}"] = params.get("min_score")
    assert set(found) == {"POST /search", "POST /search/{id}", "POST /batch/search", "POST /classify"}, found
    for where, param in found.items():
        assert param is not None, where
        number = [s for s in param["schema"]["anyOf"] if s.get("type") == "number"]
        assert number == [{"type": "number", "minimum": -1.0, "maximum": 1.0}], (where, param)
        assert "sqrt(2 - 2 min_score)" in param["description"], (where, param)
