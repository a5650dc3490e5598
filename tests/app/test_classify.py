"""POST /classify over real HTTP with the bundled CIFAR-10 model and real CIFAR-10 images: the label the
nearest gallery items agree on, the same neighbours /search returns, unlabelled items abstaining,
max_distance turning a far query into "unknown", vectors and metadata filters as in /search."""
from __future__ import annotations

import json

import httpx
import pytest

from model import default_artifact_path

from ._browser import cifar10_images
from .conftest import start_server, stop_server

KEY = "classify-key"
PER_CLASS, QUERIES_PER_CLASS = 20, 5


@pytest.fixture(scope="module")
def served(shared_data, tmp_path_factory):
    """A real server holding 20 labelled CIFAR-10 test images a class (metadata {"half": 0 or 1}), and
    5 other test images a class as queries: (server, queries as (label, jpeg))."""
    work = tmp_path_factory.mktemp("classify")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(default_artifact_path("cifar10")),
                           "SIMSEARCH_DATA_DIR": str(work / "data"), "SIMSEARCH_API_KEY": KEY,
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    images = cifar10_images(shared_data, PER_CLASS + QUERIES_PER_CLASS)
    gallery = [im for i, im in enumerate(images) if i % (PER_CLASS + QUERIES_PER_CLASS) < PER_CLASS]
    queries = [(label, data) for i, (_, label, data) in enumerate(images)
               if i % (PER_CLASS + QUERIES_PER_CLASS) >= PER_CLASS]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        for start in range(0, len(gallery), 50):
            part = gallery[start:start + 50]
            r = c.post("/index", files=[("file", (n, d, "image/jpeg")) for n, _, d in part],
                       data={"id": [n for n, _, _ in part], "label": [lb for _, lb, _ in part],
                             "metadata": [json.dumps({"half": j % 2}) for j in range(len(part))]})
            assert r.status_code == 201, r.text
    assert len(queries) == 10 * QUERIES_PER_CLASS
    yield server, queries
    stop_server(server)


def _expected(hits: list[dict]) -> tuple[str | None, dict[str, int]]:
    """The vote as the API documents it, from /search's hits: most votes, a tie to the nearest."""
    votes: dict[str, int] = {}
    for h in hits:
        if h["label"] is not None:
            votes[h["label"]] = votes.get(h["label"], 0) + 1
    if not votes:
        return None, {}
    best = max(votes.values())
    return next(h["label"] for h in hits if votes.get(h["label"]) == best), votes


@pytest.mark.parametrize("k", [1, 5, 15])
def test_the_label_is_the_vote_of_the_neighbours_search_finds_and_mostly_right(served, k):
    server, queries = served
    right = 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for label, data in queries:
            got = c.post(f"/classify?k={k}", files={"file": ("q.jpg", data, "image/jpeg")})
            assert got.status_code == 200, got.text
            answer = got.json()
            hits = c.post(f"/search?k={k}", files={"file": ("q.jpg", data, "image/jpeg")}).json()["results"]
            assert [h["id"] for h in answer["results"]] == [h["id"] for h in hits]
            want_label, want_votes = _expected(hits)
            assert (answer["label"], answer["votes"]) == (want_label, want_votes)
            assert list(answer["votes"].values()) == sorted(answer["votes"].values(), reverse=True)
            assert answer["confidence"] == pytest.approx(want_votes[want_label] / k)
            right += answer["label"] == label
    # ten classes, so chance is 0.1; the bundled model finds a same-class nearest neighbour for about
    # three queries in four against the whole training set
    assert right / len(queries) >= 0.5, right


def test_max_distance_makes_a_far_query_unknown_and_unlabelled_items_abstain(served):
    server, queries = served
    label, data = queries[0]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        nearest = c.post("/search?k=1", files={"file": ("q.jpg", data, "image/jpeg")}).json()["results"][0]
        unknown = c.post("/classify", params={"max_distance": nearest["distance"] / 2},
                         files={"file": ("q.jpg", data, "image/jpeg")}).json()
        assert (unknown["label"], unknown["votes"], unknown["results"], unknown["confidence"]) == (None, {}, [], 0.0)
        # the query itself, unlabelled, in the gallery: it is the nearest and does not vote
        assert c.post("/index", files={"file": ("q.jpg", data, "image/jpeg")}, data={"id": "unlabelled-copy"}
                      ).status_code == 201
        try:
            alone = c.post("/classify?k=1", files={"file": ("q.jpg", data, "image/jpeg")}).json()
            assert alone["results"][0]["id"] == "unlabelled-copy" and alone["label"] is None
            three = c.post("/classify?k=3", files={"file": ("q.jpg", data, "image/jpeg")}).json()
            assert sum(three["votes"].values()) == 2 and three["label"] is not None
        finally:
            assert c.delete("/index/unlabelled-copy").status_code == 204


def test_a_vector_and_a_metadata_filter_classify_as_an_image_does(served):
    server, queries = served
    _, data = queries[7]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        vector = c.post("/embed", files={"file": ("q.jpg", data, "image/jpeg")}).json()["vectors"][0]
        by_image = c.post("/classify?k=5", files={"file": ("q.jpg", data, "image/jpeg")}).json()
        by_vector = c.post("/classify?k=5", json={"vector": vector}).json()
        assert (by_vector["label"], by_vector["votes"]) == (by_image["label"], by_image["votes"])
        half = c.post("/classify", params={"k": 5, "where": '{"half": 1}'},
                      files={"file": ("q.jpg", data, "image/jpeg")}).json()
        assert len(half["results"]) == 5 and all(h["metadata"]["half"] == 1 for h in half["results"])


@pytest.mark.parametrize("query, words", [("k=0", "k"), ("k=101", "k"), ("max_distance=-1", "max_distance"),
                                          ("where=%7Bnot", "where")])
def test_a_bad_parameter_is_422_naming_it_and_the_service_keeps_classifying(served, query, words):
    server, queries = served
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post(f"/classify?{query}", files={"file": ("q.jpg", queries[0][1], "image/jpeg")})
        assert r.status_code == 422 and words in r.text, r.text
        assert c.post("/classify", files={"file": ("q.jpg", queries[0][1], "image/jpeg")}).status_code == 200


def test_search_with_vote_true_says_what_classify_says_and_only_when_asked(served):
    server, queries = served
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for label, data in queries[::7]:
            image = {"file": ("q.jpg", data, "image/jpeg")}
            classified = c.post("/classify?k=8", files=image).json()
            searched = c.post("/search?k=8&vote=true", files=image).json()
            assert searched["results"] == classified["results"]
            assert searched["vote"] == {key: classified[key] for key in ("label", "confidence", "votes")}
            assert "vote" not in c.post("/search?k=8", files=image).json()
            # from a gallery item: the vote of the neighbours it lists (itself excluded)
            first = searched["results"][0]["id"]
            by_id = c.post(f"/search/{first}", params={"k": 8, "vote": "true"}).json()
            assert first not in [h["id"] for h in by_id["results"]]
            assert (by_id["vote"]["label"], by_id["vote"]["votes"]) == _expected(by_id["results"])
            assert "vote" not in c.post(f"/search/{first}", params={"k": 8}).json()
        # many queries in one request: one vote each, in the order sent
        batch = c.post("/batch/search?k=8&vote=true",
                       files=[("file", (f"q{i}.jpg", d, "image/jpeg")) for i, (_, d) in enumerate(queries[:3])]).json()
        for (_, data), answer in zip(queries[:3], batch["queries"]):
            alone = c.post("/classify?k=8", files={"file": ("q.jpg", data, "image/jpeg")}).json()
            assert (answer["vote"]["label"], answer["vote"]["votes"]) == (alone["label"], alone["votes"])
        r = c.post("/search?vote=maybe", files={"file": ("q.jpg", queries[0][1], "image/jpeg")})
        assert r.status_code == 422 and "vote" in r.text, r.text
