"""`offset=` (the next page) with the bundled CIFAR-10 model and real CIFAR-10 images: a page at offset N is
exactly items N+1 to N+k of one longer search, on /search (an image or a vector), /search/{id} and
/batch/search, after filters, left-out ids and marks, and with group_by it skips whole groups; a window
too deep is a 422 that names it, and the service keeps serving."""
from __future__ import annotations

import pytest

from ._browser import cifar10_images
from .conftest import running
from .test_api import assert_error, still_serving, upload
from .test_groups import _ids, _index

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def photos(shared_data):
    """A gallery of 12 real training images a class, and 2 test images a class as queries."""
    return cifar10_images(shared_data, 12, split="train"), cifar10_images(shared_data, 2)


async def _pages(c, path: str, k: int, pages: int, **request) -> list[str]:
    """The ids of `pages` pages of k, asked one page at a time with offset."""
    ids = []
    for page in range(pages):
        sep = "&" if "?" in path else "?"
        r = await c.post(f"{path}{sep}k={k}&offset={page * k}", **request)
        assert r.status_code == 200, r.text
        assert r.json()["offset"] == page * k and r.json()["k"] == k
        ids += _ids(r.json()["results"])
    return ids


async def test_pages_at_an_offset_are_the_next_items_of_one_longer_search(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery, metadata=lambda n: {"shelf": int(n.rsplit("-", 1)[-1].split(".")[0]) % 3})
        name, _, data = queries[0]
        image = {"files": [upload(data, name, "image/jpeg")]}
        vector = (await c.post("/embed", files=[upload(data, name, "image/jpeg")])).json()["vectors"][0]
        for path, request in [("/search", image), ("/search", {"json": {"vector": vector}}),
                              ('/search?where={"shelf":1}&exclude=' + gallery[3][0], image),
                              ("/search?label=cat&max_distance=1.2", image),
                              (f"/search?like={gallery[5][0]}&unlike={gallery[50][0]}", image),
                              (f"/search/{gallery[7][0]}", {})]:
            whole = await c.post(f"{path}{'&' if '?' in path else '?'}k=24", **request)
            assert whole.status_code == 200, whole.text
            assert await _pages(c, path, 6, 4, **request) == _ids(whole.json()["results"]), path
        # past the end: what is left, then nothing
        assert len(await _pages(c, "/search", 50, 3, **image)) == len(gallery)
        r = await c.post(f"/search?k=10&offset={len(gallery)}", **image)
        assert r.status_code == 200 and r.json()["results"] == [], r.text
        # a batch: each query's page is its own search's
        files = [upload(d, n, "image/jpeg") for n, _, d in queries[:3]]
        batch = await c.post("/batch/search?k=5&offset=5", files=files)
        assert batch.status_code == 200 and batch.json()["offset"] == 5, batch.text
        for (n, _, d), got in zip(queries[:3], batch.json()["queries"]):
            whole = await c.post("/search?k=10", files=[upload(d, n, "image/jpeg")])
            # (a batch's embedding may differ from one query's in the last float bits: compare the set too)
            assert _ids(got["results"]) == _ids(whole.json()["results"])[5:]


async def test_an_offset_with_group_by_skips_whole_groups(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery)
        for name, _, data in queries[:4]:
            image = {"files": [upload(data, name, "image/jpeg")]}
            whole = (await c.post("/search?k=8&group_by=label&group_size=2", **image)).json()
            page = await c.post("/search?k=3&offset=5&group_by=label&group_size=2", **image)
            assert page.status_code == 200, page.text
            assert page.json()["groups"] == whole["groups"][5:8]
            assert page.json()["results"] == [h for g in whole["groups"][5:8] for h in g["results"]]


async def test_an_offset_too_deep_or_below_zero_is_a_422_that_names_it(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery[:20])
        image = {"files": [upload(queries[0][2], "q.jpg", "image/jpeg")]}
        assert_error(await c.post("/search?k=1000&offset=9001", **image), 422, "invalid_parameter",
                     "offset=9001 + k=1000", "at most 10000")
        assert_error(await c.post("/search?k=10&offset=4000&group_by=label&group_size=3", **image), 422,
                     "invalid_parameter", "offset=4000 + k=10 groups of group_size=3", "at most 10000")
        r = await c.post("/search?k=10&offset=-1", **image)
        assert r.status_code == 422 and "offset" in r.text, r.text
        ok = await c.post("/search?k=1000&offset=9000", **image)
        assert ok.status_code == 200 and ok.json()["results"] == [], ok.text
        await still_serving(c)
