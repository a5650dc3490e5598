"""The first error a bad search request gets, on each search route (POST /search, /search/{id}, /batch/search,
/classify): a table of bad requests and the answer each route gives, so that the checks the routes share (their
query models in app/_params.py) say the same thing in the same order everywhere, and a parameter a route does not
take (crop on /search/{id}, combine on /batch/search, offset on /classify) is refused by name. Real app in process
(TestClient, with its lifespan), the seeded model with a PDDM head so that rerank's own checks are reached, and the
plain one, which takes no rerank."""
from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from app import create_app

from .conftest import settings_for
from .test_api import png, upload

ROUTES = ("/search", "/search/qa", "/batch/search", "/classify")
SEARCHES = ROUTES[:3]   # the searches by neighbours: /classify takes fewer parameters

_TAKES = {
    "/search/qa": ("POST /search/{id}", "ef_search, exact, exclude, gallery, group_by, group_size, k, label, like, "
                                        "max_distance, min_score, nprobe, offset, rerank, unlike, vote, where"),
    "/batch/search": ("POST /batch/search", "crop, ef_search, exact, exclude, gallery, group_by, group_size, k, "
                                            "label, like, max_distance, min_score, nprobe, offset, rerank, unlike, "
                                            "vote, where"),
    "/classify": ("POST /classify", "combine, crop, ef_search, exact, gallery, k, max_distance, min_score, nprobe, "
                                    "where"),
}


def bad(message: str, status: int = 422, code: str = "invalid_parameter") -> tuple[int, str, str]:
    return status, code, message


def takes_no(route: str, *names: str) -> tuple[int, str, str]:
    """The refusal of a query parameter the route does not declare."""
    said, takes = _TAKES[route]
    return bad(f"{said} takes no query parameter {', '.join(map(repr, names))}; it takes: {takes}")


def on(routes, answer) -> dict:
    return {route: answer for route in routes}


WINDOW = bad("offset=9995 + k=10: a search reads at most 10000 items to answer; narrow it with filters, or leave out "
             "what was seen (exclude)")
BOTH_MARKED = bad("id(s) ['qb'] are both liked and unliked; mark each item one way")
GROUP_BY = bad("group_by='colour': give `label`, or `metadata.KEY` for a key of the items' metadata (e.g. "
               "metadata.product, or metadata.cam.make for a key inside an object)")
CROP_TEXT = bad("crop='a,b' must be four numbers left,top,right,bottom, fractions (0 to 1) of the image's width and "
                "height, with left < right and top < bottom, e.g. 0.25,0.1,0.75,0.9")
COMBINE = bad("combine='all': give `mean` (items near all the photos) or `best` (items near any of them)")
WHERE_JSON = bad("where='{' is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
                 "(char 1)")
BAD_ID = "is not valid: 1-1024 characters, no control characters, no surrounding spaces, no '.' or '..' between " \
         "slashes, not ending in '/thumbnail'"
NO_GALLERY = bad("no gallery named 'nope' (POST /index?gallery=NAME makes one)", 404, "gallery_not_found")
GALLERY_NAME = bad("gallery: String should match pattern '^[a-z0-9][a-z0-9_-]{0,62}$' (got 'Bad!')")
K_ZERO = bad("k: Input should be greater than or equal to 1 (got '0')")
BOTH_CUTS = bad("max_distance=0.8 and min_score=0.5 are one cut in two units (distance = sqrt(2 - 2 score)); keep "
                "one: min_score for a cosine similarity, max_distance for a distance")
NO_PDDM = "has no PDDM head; rerank needs an artifact trained with the PDDM"

# query -> {route: (status, code, message)}, on the service whose model has a PDDM head
ONE_WRONG = {
    "offset=9995&k=10": {**on(SEARCHES, WINDOW), "/classify": takes_no("/classify", "offset")},
    "k=100&group_by=label&group_size=100": {
        **on(SEARCHES, bad("k=100 groups of group_size=100 is 10000 items; at most 1000 in one answer")),
        "/classify": takes_no("/classify", "group_by", "group_size")},
    "group_size=3": {**on(SEARCHES, bad("group_size=3 needs group_by (label or metadata.KEY)")),
                     "/classify": takes_no("/classify", "group_size")},
    "group_by=colour": {**on(SEARCHES, GROUP_BY), "/classify": takes_no("/classify", "group_by")},
    "rerank=20&group_by=label": {
        **on(SEARCHES, bad("rerank and group_by do not go together: rerank re-orders a fixed number of nearest "
                           "items, group_by reads as many as the groups need")),
        "/classify": takes_no("/classify", "group_by", "rerank")},
    "rerank=5&offset=3": {
        **on(SEARCHES, bad("rerank=5 must be at least offset + k = 13: it is the number of nearest candidates the "
                           "PDDM re-orders")),
        "/classify": takes_no("/classify", "offset", "rerank")},
    "label=a%01b": {**on(SEARCHES, bad("label 'a\\x01b' is not valid: at most 256 characters, no control characters",
                                       code="invalid_label")),
                    "/classify": takes_no("/classify", "label")},
    "where=%7B": on(ROUTES, WHERE_JSON),
    "where=null": on(ROUTES, bad('where=null: give a non-empty JSON object of metadata keys and values, e.g. '
                                 '{"source": "phone"}, or leave where out')),
    "exclude=a/../b": {**on(SEARCHES, bad(f"id 'a/../b' {BAD_ID}", code="invalid_id")),
                       "/classify": takes_no("/classify", "exclude")},
    "&".join(f"exclude=x{i}" for i in range(1001)): {
        **on(SEARCHES, bad("1001 exclude ids; at most 1000 in one search")),
        "/classify": takes_no("/classify", "exclude")},
    "like=qb&unlike=qb": {**on(SEARCHES, BOTH_MARKED), "/classify": takes_no("/classify", "like", "unlike")},
    "like=./x": {**on(SEARCHES, bad(f"id './x' {BAD_ID}", code="invalid_id")),
                 "/classify": takes_no("/classify", "like")},
    "&".join(f"like=l{i}" for i in range(101)): {
        **on(SEARCHES, bad("101 like and 0 unlike ids; at most 100 together")),
        "/classify": takes_no("/classify", "like")},
    "like=qb&rerank=20": {
        **on(SEARCHES, bad("rerank=20 re-orders by the PDDM score of one image's embedding; a query refined by "
                           "like/unlike is a mix of several")),
        "/classify": takes_no("/classify", "like", "rerank")},
    "combine=all": {"/search": COMBINE, "/search/qa": takes_no("/search/qa", "combine"),
                    "/batch/search": takes_no("/batch/search", "combine"), "/classify": COMBINE},
    "combine=best&group_by=label": {
        "/search": bad("combine=best and group_by do not go together: best merges each photo's nearest items, "
                       "group_by works on one query; use combine=mean"),
        "/search/qa": takes_no("/search/qa", "combine"), "/batch/search": takes_no("/batch/search", "combine"),
        "/classify": takes_no("/classify", "group_by")},
    "combine=best&rerank=20": {
        "/search": bad("combine=best and rerank do not go together: best merges each photo's nearest items, rerank "
                       "works on one query; use combine=mean"),
        "/search/qa": takes_no("/search/qa", "combine"), "/batch/search": takes_no("/batch/search", "combine"),
        "/classify": takes_no("/classify", "rerank")},
    "crop=a,b": {**on(ROUTES, CROP_TEXT), "/search/qa": takes_no("/search/qa", "crop")},
    "crop=0.5,0.5,0.2,0.2": {**on(ROUTES, bad("crop 0.5,0.5,0.2,0.2: left must be less than right and top less "
                                              "than bottom (it is left,top,right,bottom)")),
                             "/search/qa": takes_no("/search/qa", "crop")},
    "k=0": on(ROUTES, K_ZERO),
    "gallery=Bad!": on(ROUTES, GALLERY_NAME),
    "min_score=1.5": on(ROUTES, bad("min_score: Input should be less than or equal to 1 (got '1.5')")),
    "max_distance=0.8&min_score=0.5": on(ROUTES, BOTH_CUTS),
}

# Several things wrong at once: the first said, in one order on every route. A parameter the route does not take;
# FastAPI's types and bounds (every wrong one); the request's own checks (the search window, groups, label, the
# distance cut (max_distance and min_score both given), exclude, like/unlike, combine, crop); the gallery (404 when there is none of that name); the service's (rerank, group_by
# and where as the index reads them). Until the checks were the query models' (app/_params.py), each route made
# them in its own order: the rows marked "was" answered otherwise.
SEVERAL_WRONG = {
    # was: /search/{id} said BOTH_MARKED (it checked the marks first)
    "offset=9995&like=qb&unlike=qb": {**on(SEARCHES, WINDOW),
                                      "/classify": takes_no("/classify", "like", "offset", "unlike")},
    # was: /classify said CROP_TEXT (it checked crop before combine)
    "crop=a,b&combine=all": {"/search": COMBINE, "/search/qa": takes_no("/search/qa", "combine", "crop"),
                             "/batch/search": takes_no("/batch/search", "combine"), "/classify": COMBINE},
    # was: /batch/search said CROP_TEXT (it checked crop before the marks)
    "crop=a,b&like=qb&unlike=qb": {"/search": BOTH_MARKED, "/search/qa": takes_no("/search/qa", "crop"),
                                   "/batch/search": BOTH_MARKED, "/classify": takes_no("/classify", "like", "unlike")},
    # was: WHERE_JSON (where was checked with the search's parameters, crop after them)
    "crop=a,b&where=%7B": {**on(ROUTES, CROP_TEXT), "/search/qa": takes_no("/search/qa", "crop")},
    # was: GROUP_BY on /search and /batch/search, BOTH_MARKED on /search/{id}
    "like=qb&unlike=qb&group_by=colour": {**on(SEARCHES, BOTH_MARKED),
                                          "/classify": takes_no("/classify", "group_by", "like", "unlike")},
    "k=0&like=qb&unlike=qb": {**on(SEARCHES, K_ZERO), "/classify": takes_no("/classify", "like", "unlike")},
    "gallery=Bad!&group_size=3": {**on(SEARCHES, GALLERY_NAME), "/classify": takes_no("/classify", "group_size")},
    # was: NO_GALLERY (the gallery was looked up before any of the request's own checks)
    "gallery=nope&group_size=3": {**on(SEARCHES, bad("group_size=3 needs group_by (label or metadata.KEY)")),
                                  "/classify": takes_no("/classify", "group_size")},
    # was: NO_GALLERY
    "gallery=nope&crop=a,b": {**on(ROUTES, CROP_TEXT), "/search/qa": takes_no("/search/qa", "crop")},
    "gallery=nope&where=%7B": on(ROUTES, NO_GALLERY),
    # the distance cut among the request's own checks: after the label, before the marks, combine and crop
    "label=a%01b&max_distance=0.8&min_score=0.5": {
        **on(SEARCHES, bad("label 'a\\x01b' is not valid: at most 256 characters, no control characters",
                           code="invalid_label")),
        "/classify": takes_no("/classify", "label")},
    "max_distance=0.8&min_score=0.5&like=qb&unlike=qb": {
        **on(SEARCHES, BOTH_CUTS), "/classify": takes_no("/classify", "like", "unlike")},
    "max_distance=0.8&min_score=0.5&combine=all&crop=a,b": {
        **on(ROUTES, BOTH_CUTS), "/search/qa": takes_no("/search/qa", "combine", "crop"),
        "/batch/search": takes_no("/batch/search", "combine")},
    "min_score=7&max_distance=0.8&group_size=3": {**on(ROUTES, bad("min_score: Input should be less than or equal "
                                                                   "to 1 (got '7')")),
                                                  "/classify": takes_no("/classify", "group_size")},
    "gallery=nope&max_distance=0.8&min_score=0.5": on(ROUTES, BOTH_CUTS),
}

# On the service whose model has no PDDM head: rerank is refused for that before anything else about it
WITHOUT_PDDM = {
    "rerank=20&group_by=label": on(SEARCHES, NO_PDDM),
    "rerank=5&offset=3": on(SEARCHES, NO_PDDM),
    # was: /search/{id} said "a query refined by like/unlike is a mix of several" (it checked the marks first)
    "like=qb&rerank=20": on(SEARCHES, NO_PDDM),
    "combine=best&rerank=20": {"/search": NO_PDDM},
}


def _serving(artifact, data_dir):
    """A TestClient of the app with its lifespan, ready, whose default gallery holds the items qa, qb, qc."""
    with TestClient(create_app(settings_for(artifact, data_dir))) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service was not ready in 120 s"
            time.sleep(0.05)
        r = c.post("/index", data={"id": ["qa", "qb", "qc"]}, files=[upload(png(seed)) for seed in (1, 2, 3)])
        assert r.status_code == 201, r.text
        yield c


@pytest.fixture(scope="module")
def with_pddm(pddm_artifact, tmp_path_factory):
    yield from _serving(pddm_artifact, tmp_path_factory.mktemp("with-pddm") / "data")


@pytest.fixture(scope="module")
def without_pddm(hybrid1_artifact, tmp_path_factory):
    yield from _serving(hybrid1_artifact, tmp_path_factory.mktemp("without-pddm") / "data")


def _first_error(client: TestClient, route: str, query: str) -> tuple[int, str, str]:
    files = None if route.startswith("/search/") else [upload(png(4))]
    r = client.post(f"{route}?{query}", files=files)
    assert r.status_code >= 400, (route, query, r.text)
    error = r.json()["error"]
    return r.status_code, error["code"], error["message"]


def _cases(table: dict) -> list:
    return [pytest.param(query, route, answer, id=f"{route} {query[:40]}")
            for query, answers in table.items() for route, answer in answers.items()]


@pytest.mark.parametrize("query, route, answer", _cases(ONE_WRONG))
def test_a_request_with_one_thing_wrong_gets_the_same_error_on_every_search_route_that_takes_it(
        with_pddm, query, route, answer):
    assert _first_error(with_pddm, route, query) == answer


@pytest.mark.parametrize("query, route, answer", _cases(SEVERAL_WRONG))
def test_a_request_with_several_things_wrong_is_told_the_first_in_one_order(with_pddm, query, route, answer):
    assert _first_error(with_pddm, route, query) == answer


@pytest.mark.parametrize("query, route, words", _cases(WITHOUT_PDDM))
def test_a_model_without_a_pddm_head_refuses_rerank_first(without_pddm, query, route, words):
    status, code, message = _first_error(without_pddm, route, query)
    assert (status, code) == (422, "invalid_parameter") and words in message, message

