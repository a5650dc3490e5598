"""Several photos as one query (`POST /search` and `/classify` with several `file` parts) with the bundled
CIFAR-10 model and real CIFAR-10 images: the query is the unit mean of the photos' embeddings, exactly what
a search with that mean as a JSON vector finds, with marks, filters and crop as for one photo; a part that is
not an image fails the request naming it, too many parts are refused, and the service keeps serving."""
from __future__ import annotations

import numpy as np
import pytest

from ._browser import cifar10_images
from .conftest import running
from .test_api import assert_error, still_serving, upload
from .test_groups import _ids, _index

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def photos(shared_data):
    """A gallery of 12 real training images a class, and 3 test images a class as queries."""
    return cifar10_images(shared_data, 12, split="train"), cifar10_images(shared_data, 3)


def _files(photos) -> list:
    return [upload(data, name, "image/jpeg") for name, _, data in photos]


async def test_several_photos_search_with_the_unit_mean_of_their_embeddings(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery)
        cats = [q for q in queries if q[1] == "cat"]
        assert len(cats) == 3
        vectors = np.array((await c.post("/embed", files=_files(cats))).json()["vectors"])
        mean = vectors.mean(axis=0)
        mean = (mean / np.linalg.norm(mean)).tolist()
        marks = f"like={gallery[40][0]}&unlike={gallery[3][0]}"
        for params in ["k=12", "k=5&label=cat", "k=6&group_by=label", f"k=5&{marks}", "k=8&offset=4&max_distance=1.1"]:
            together = await c.post(f"/search?{params}", files=_files(cats))
            by_vector = await c.post(f"/search?{params}", json={"vector": mean})
            assert together.status_code == 200 and by_vector.status_code == 200, (together.text, by_vector.text)
            assert _ids(together.json()["results"]) == _ids(by_vector.json()["results"]), params
            assert [h["score"] for h in together.json()["results"]] == \
                pytest.approx([h["score"] for h in by_vector.json()["results"]], abs=1e-5)
        # not what any one photo finds alone
        together = _ids((await c.post("/search?k=12", files=_files(cats))).json()["results"])
        for p in cats:
            assert _ids((await c.post("/search?k=12", files=_files([p]))).json()["results"]) != together
        # /classify votes with the same neighbours
        voted = await c.post("/classify?k=7", files=_files(cats))
        assert voted.status_code == 200, voted.text
        assert voted.json()["results"] == (await c.post("/classify?k=7", json={"vector": mean})).json()["results"]
        # the same region of every photo: the mean of the regions' embeddings
        regions = np.array((await c.post("/embed?crop=0,0,0.5,1", files=_files(cats))).json()["vectors"]).mean(axis=0)
        cropped = await c.post("/search?k=6&crop=0,0,0.5,1", files=_files(cats))
        want = await c.post("/search?k=6", json={"vector": (regions / np.linalg.norm(regions)).tolist()})
        assert _ids(cropped.json()["results"]) == _ids(want.json()["results"])


async def test_a_part_that_is_not_an_image_or_too_many_parts_fail_the_request_naming_it(trained, photos):
    gallery, queries = photos
    async with running(trained(max_files_per_request=4)) as c:
        for start in range(0, 20, 4):
            r = await c.post("/index", files=_files(gallery[start:start + 4]))
            assert r.status_code == 201, r.text
        files = _files(queries[:2])
        files.insert(1, ("file", ("notes.txt", b"not an image at all", "text/plain")))
        assert_error(await c.post("/search", files=files), 415, "unsupported_format", "file 1 ('notes.txt')")
        assert_error(await c.post("/search", files=_files(queries[:5])), 413, "too_many_parts", "4")
        ok = await c.post("/search?k=3", files=_files(queries[:4]))
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3, ok.text
        await still_serving(c)


def _merged(answers: list[list[dict]], offset: int, k: int) -> list[str]:
    """Several answers as one, by hand: each item once at its best score, the best first."""
    best: dict[str, float] = {}
    for hits in answers:
        for h in hits:
            best[h["id"]] = max(best.get(h["id"], -2.0), h["score"])
    return [i for i, _ in sorted(best.items(), key=lambda kv: -kv[1])][offset:offset + k]


async def test_combine_best_gives_the_items_nearest_to_any_photo_each_at_its_best_score(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery)
        mixed = [queries[0], queries[5], queries[13]]   # photos of three different classes
        for params, k, offset in [("", 10, 0), ('where={"$or":[{"a":1},{"a":{"$exists":false}}]}', 6, 0),
                                  ("label=cat", 4, 2), (f"like={gallery[7][0]}", 8, 3)]:
            got = await c.post(f"/search?k={k}&offset={offset}&combine=best&{params}", files=_files(mixed))
            assert got.status_code == 200, got.text
            alone = [(await c.post(f"/search?k={k + offset}&{params}", files=_files([p]))).json()["results"]
                     for p in mixed]
            assert _ids(got.json()["results"]) == _merged(alone, offset, k), params
            scores = [h["score"] for h in got.json()["results"]]
            assert scores == sorted(scores, reverse=True)
        # near any: each photo's own nearest item is among them; the mean finds fewer of the three classes
        best = _ids((await c.post("/search?k=9&combine=best", files=_files(mixed))).json()["results"])
        for p in mixed:
            assert _ids((await c.post("/search?k=1", files=_files([p]))).json()["results"])[0] in best
        voted = await c.post("/classify?k=5&combine=best", files=_files(mixed))
        assert voted.status_code == 200, voted.text
        assert _ids(voted.json()["results"]) == _merged(
            [(await c.post("/search?k=5", files=_files([p]))).json()["results"] for p in mixed], 0, 5)
        # one photo: best is that photo's search
        one = await c.post("/search?k=5&combine=best", files=_files(mixed[:1]))
        plain = await c.post("/search?k=5", files=_files(mixed[:1]))
        assert _ids(one.json()["results"]) == _ids(plain.json()["results"])
        for params, words in [("combine=all", "combine='all'"),
                              ("combine=best&group_by=label", "combine=best and group_by")]:
            assert_error(await c.post(f"/search?{params}", files=_files(mixed)), 422, "invalid_parameter", words)
        for route in ("/search", "/classify"):   # no photo and no marks: said as for any search without an image
            assert_error(await c.post(f"{route}?combine=best"), 415, "unsupported_media_type", "`file` part")
        await still_serving(c)
