"""POST /search?rerank=N end to end (in-process ASGI app with its lifespan, the real model, Store and
FAISS): the N nearest candidates are re-ordered by the artifact's PDDM head and the best k returned."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import model

from .conftest import running, settings_for

pytestmark = pytest.mark.anyio


def upload(data: bytes, name: str = "q.jpg"):
    return ("file", (name, data, "image/jpeg"))


async def index_gallery(c, cifar) -> tuple[list[str], list[bytes]]:
    images = cifar["airplane"] + cifar["automobile"]
    labels = ["airplane"] * len(cifar["airplane"]) + ["automobile"] * len(cifar["automobile"])
    ids = []
    for lab in ("airplane", "automobile"):
        r = await c.post("/index", files=[upload(b, f"{lab}{i}.jpg") for i, b in enumerate(cifar[lab])],
                         data={"label": lab})
        assert r.status_code == 201, r.text
        ids += r.json()["ids"]
    assert len(ids) == len(images) == len(labels)
    return ids, images


def expected_order(artifact, images: list[bytes], ids: list[str], query: bytes, n: int, k: int) -> list[str]:
    """The answer computed outside the service: cosine top-n over the gallery, re-ordered by PDDM, best k."""
    emb = model.Embedder.from_file(artifact, device="cpu")
    gallery = emb.embed([Image.open(io.BytesIO(b)) for b in images])
    q = emb.embed([Image.open(io.BytesIO(query))])[0]
    top = np.argsort(-(gallery @ q), kind="stable")[:n]
    order, _ = model.PDDM.from_artifact(model.load_artifact(artifact)).rerank(q, gallery[top])
    return [ids[i] for i in top[order][:k]]


async def test_rerank_reorders_the_faiss_candidates_by_pddm_score(pddm_artifact, cifar, tmp_path):
    async with running(settings_for(pddm_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        ids, images = await index_gallery(c, cifar)
        query = cifar["airplane"][2]
        plain = await c.post("/search?k=12", files=[upload(query)])
        assert plain.status_code == 200, plain.text
        assert plain.json()["reranked"] is False
        r = await c.post("/search?k=5&rerank=12", files=[upload(query)])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reranked"] is True and body["candidates"] == 12 and body["k"] == 5
        got = [h["id"] for h in body["results"]]
        assert len(got) == 5 and set(got) <= {h["id"] for h in plain.json()["results"]}
        assert got == expected_order(pddm_artifact, images, ids, query, 12, 5)
        assert got != [h["id"] for h in plain.json()["results"]][:5]  # the PDDM changed the order
        # the hits keep their cosine score and distance
        cos = {h["id"]: h["score"] for h in plain.json()["results"]}
        assert all(h["score"] == pytest.approx(cos[h["id"]], abs=1e-6) for h in body["results"])
        # a search by the query's vector is re-ranked the same way
        vector = (await c.post("/embed", files=[upload(query)])).json()["vectors"][0]
        by_vector = await c.post("/search?k=5&rerank=12", json={"vector": vector})
        assert [h["id"] for h in by_vector.json()["results"]] == got and by_vector.json()["reranked"] is True
        # a batch search re-ranks each of its queries as a single search would
        other = cifar["automobile"][5]
        batch = await c.post("/batch/search?k=5&rerank=12", files=[upload(other, "car.jpg"), upload(query)])
        assert batch.status_code == 200 and batch.json()["reranked"] is True, batch.text
        answers = [[h["id"] for h in q["results"]] for q in batch.json()["queries"]]
        assert answers == [expected_order(pddm_artifact, images, ids, other, 12, 5), got]
        # the next page is the PDDM's next five of the same 12 candidates
        page = await c.post("/search?k=5&offset=5&rerank=12", files=[upload(query)])
        assert page.status_code == 200 and page.json()["offset"] == 5, page.text
        assert [h["id"] for h in page.json()["results"]] == expected_order(pddm_artifact, images, ids, query, 12,
                                                                           10)[5:]


async def test_rerank_fewer_candidates_than_k_is_a_422(pddm_artifact, tmp_path, jpeg):
    async with running(settings_for(pddm_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        r = await c.post("/search?k=10&rerank=5", files=[upload(jpeg)])
        assert r.status_code == 422, r.text
        assert "rerank" in r.json()["error"]["message"]
        r = await c.post("/search?k=5&offset=5&rerank=8", files=[upload(jpeg)])
        assert r.status_code == 422, r.text
        assert "rerank=8 must be at least offset + k = 10" in r.json()["error"]["message"]


async def test_rerank_without_a_pddm_head_is_a_422_that_says_so(hybrid1_artifact, tmp_path, jpeg):
    async with running(settings_for(hybrid1_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        r = await c.post("/search?k=3&rerank=20", files=[upload(jpeg)])
        assert r.status_code == 422, r.text
        assert "PDDM" in r.json()["error"]["message"]
        ok = await c.post("/search?k=3", files=[upload(jpeg)])
        assert ok.status_code == 200 and ok.json()["reranked"] is False


@pytest.mark.parametrize("other,words", [("like=a", "like/unlike"), ("group_by=label", "rerank and group_by")])
async def test_rerank_with_marks_or_groups_is_a_422_that_says_why(pddm_artifact, tmp_path, jpeg, other, words):
    async with running(settings_for(pddm_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        assert (await c.post("/index", files=[upload(jpeg)], data={"id": "a", "label": "x"})).status_code == 201
        r = await c.post(f"/search?k=3&rerank=5&{other}", files=[upload(jpeg)])
        assert r.status_code == 422, r.text
        assert words in r.json()["error"]["message"]
        assert (await c.post(f"/search?k=3&{other}", files=[upload(jpeg)])).status_code == 200


async def test_rerank_reorders_the_nearest_candidates_that_are_not_excluded(pddm_artifact, cifar, tmp_path):
    async with running(settings_for(pddm_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        _, images = await index_gallery(c, cifar)
        queries = images[:1]   # a gallery image: its own copy is the nearest, and is left out below
        plain = (await c.post("/search?k=8", files=[upload(queries[0])])).json()["results"]
        left_out = [h["id"] for h in plain[:6]]   # of the 8 nearest, only 2 may come back
        r = await c.post("/search?k=4&rerank=8&" + "&".join(f"exclude={i}" for i in left_out),
                         files=[upload(queries[0])])
        assert r.status_code == 200, r.text
        got = [h["id"] for h in r.json()["results"]]
        candidates = [h["id"] for h in (await c.post("/search?k=14", files=[upload(queries[0])])).json()["results"]]
        assert len(got) == 4 and set(got) <= set(candidates[6:]) and not set(got) & set(left_out)


async def test_rerank_on_a_search_from_a_gallery_item_reorders_its_nearest_others(pddm_artifact, cifar, tmp_path):
    async with running(settings_for(pddm_artifact, tmp_path / "data", rate_limit_per_minute=0)) as c:
        ids, images = await index_gallery(c, cifar)
        r = await c.post(f"/search/{ids[0]}?k=4&rerank=8")
        assert r.status_code == 200, r.text
        assert r.json()["reranked"] is True and r.json()["candidates"] == 8
        got = [h["id"] for h in r.json()["results"]]
        # outside the service: the item's 8 nearest others (it is not its own neighbour), re-ordered by the PDDM
        assert got == expected_order(pddm_artifact, images[1:], ids[1:], images[0], 8, 4)
        nearest = [h["id"] for h in (await c.post(f"/search/{ids[0]}?k=8")).json()["results"]]
        assert ids[0] not in got and set(got) <= set(nearest)
