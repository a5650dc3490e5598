"""`group_by=` and `group_size=` (grouped search) with the bundled CIFAR-10 model and real CIFAR-10 images:
the k nearest labels (or metadata values), each with its nearest items, exactly the items the service's own
label and metadata filters find for each group; on /search, /search/{id}, /batch/search and with marks;
wrong values are 422s that name them, and the service keeps serving."""
from __future__ import annotations

import json

import pytest


from ._browser import cifar10_images
from .conftest import running
from .test_api import assert_error, still_serving, upload

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def photos(shared_data):
    """A gallery of 12 real training images a class, and 2 test images a class as queries."""
    return cifar10_images(shared_data, 12, split="train"), cifar10_images(shared_data, 2)



async def _index(c, gallery, metadata=None) -> None:
    for start in range(0, len(gallery), 40):
        part = gallery[start:start + 40]
        data = {"id": [n for n, _, _ in part], "label": [label for _, label, _ in part]}
        if metadata:
            data["metadata"] = [json.dumps(metadata(n)) for n, _, _ in part]
        r = await c.post("/index", files=[upload(d, n, "image/jpeg") for n, _, d in part], data=data)
        assert r.status_code == 201, r.text


def _ids(results) -> list[str]:
    return [h["id"] for h in results]


async def _check_groups(c, answer: dict, k: int, size: int, query: dict, filter_of) -> None:
    """Each group holds what the service's own filter for its value finds, the groups come nearest first,
    and `results` is the groups' items one group after another."""
    groups = answer["groups"]
    assert len(groups) == k and len({json.dumps(g["value"]) for g in groups}) == k
    assert answer["results"] == [h for g in groups for h in g["results"]]
    firsts = [g["results"][0]["score"] for g in groups]
    assert firsts == sorted(firsts, reverse=True)
    for g in groups:
        r = await c.post(f"/search?k={size}&{filter_of(g['value'])}", **query)
        assert r.status_code == 200, r.text
        assert _ids(g["results"]) == _ids(r.json()["results"]), g["value"]


async def test_group_by_label_gives_the_k_nearest_labels_each_with_the_items_its_label_filter_finds(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery)
        for name, _, data in queries[:6]:
            query = {"files": [upload(data, name, "image/jpeg")]}
            for k, size in [(10, 1), (4, 3)]:
                r = await c.post(f"/search?k={k}&group_by=label&group_size={size}&vote=true", **query)
                assert r.status_code == 200, r.text
                await _check_groups(c, r.json(), k, size, query, lambda v: f"label={v}")
            plain = (await c.post("/search?k=10", **query)).json()["results"]
            assert len({h["label"] for h in plain}) < 10   # what grouping is for: plain pages repeat labels
        # the batch route groups each query as /search does
        files = [upload(d, n, "image/jpeg") for n, _, d in queries[:3]]
        batch = await c.post("/batch/search?k=5&group_by=label&group_size=2", files=files)
        assert batch.status_code == 200, batch.text
        for (name, _, data), got in zip(queries[:3], batch.json()["queries"]):
            one = await c.post("/search?k=5&group_by=label&group_size=2", files=[upload(data, name, "image/jpeg")])
            # (ids and values: a batch's embedding may differ from one query's in the last float bits)
            assert [(g["value"], _ids(g["results"])) for g in got["groups"]] == \
                [(g["value"], _ids(g["results"])) for g in one.json()["groups"]]
            assert _ids(got["results"]) == _ids(one.json()["results"])


async def test_group_by_a_metadata_key_skips_items_without_it_and_groups_json_values(trained, photos):
    gallery, queries = photos

    position = {name: n for n, (name, _, _) in enumerate(gallery)}

    def album(name: str) -> dict:
        n = position[name]
        return {} if n % 5 == 0 else {"album": n % 4}   # 4 albums; a fifth of the items in none

    async with running(trained()) as c:
        await _index(c, gallery, album)
        query = {"files": [upload(queries[0][2], "q.jpg", "image/jpeg")]}
        r = await c.post("/search?k=4&group_by=metadata.album&group_size=2", **query)
        assert r.status_code == 200, r.text
        await _check_groups(c, r.json(), 4, 2, query, lambda v: "where=" + json.dumps({"album": v}))
        assert all("album" in h["metadata"] for h in r.json()["results"])
        # more groups asked than there are: every one there is
        r = await c.post("/search?k=9&group_by=metadata.album", **query)
        assert sorted(g["value"] for g in r.json()["groups"]) == [0, 1, 2, 3] and "note" not in r.json()
        # a key no item has: no groups, and the answer says why rather than looking like a broken search
        for route in ("/search", "/batch/search"):
            r = await c.post(route + "?k=3&group_by=metadata.albun", **query)
            answer = r.json()["queries"][0] if route == "/batch/search" else r.json()
            assert answer["groups"] == [] and answer["results"] == []
            assert "no item found has a value for metadata.albun" in answer["note"], answer
        past_the_end = (await c.post("/search?k=3&offset=30&group_by=metadata.album", **query)).json()
        assert past_the_end["groups"] == [] and "note" not in past_the_end   # an empty next page is no puzzle


async def test_an_items_groups_leave_the_item_out_and_marks_refine_a_grouped_search(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery)
        start = gallery[0][0]
        r = await c.post(f"/search/{start}?k=10&group_by=label&group_size=2")
        assert r.status_code == 200, r.text
        got = r.json()
        assert len(got["groups"]) == 10 and start not in _ids(got["results"])
        vector = (await c.get(f"/index/{start}?vector=true")).json()["vector"]
        by_vector = await c.post("/search?k=10&group_by=label&group_size=3", json={"vector": vector})
        # the item itself is its own nearest: by vector its group holds it, by id the next one instead
        mine = next(g for g in by_vector.json()["groups"] if start in _ids(g["results"]))
        theirs = next(g for g in got["groups"] if g["value"] == mine["value"])
        assert _ids(theirs["results"]) == [i for i in _ids(mine["results"]) if i != start][:2]
        # marks: the marked items are left out of every group
        like = _ids(got["results"])[:2]
        marked = await c.post(f"/search/{start}?k=10&group_by=label&group_size=2&like={like[0]}&unlike={like[1]}")
        assert marked.status_code == 200, marked.text
        assert len(marked.json()["groups"]) == 10
        assert not {start, *like} & set(_ids(marked.json()["results"]))
        assert_error(await c.post("/search/no-such-item?group_by=label"), 404, "not_found", "no-such-item")


async def test_wrong_group_parameters_are_422s_that_name_them_and_the_service_keeps_serving(trained, photos):
    gallery, queries = photos
    async with running(trained()) as c:
        await _index(c, gallery[:20])
        query = [upload(queries[0][2], "q.jpg", "image/jpeg")]
        assert_error(await c.post("/search?group_by=year", files=query), 422, "invalid_parameter", "'year'",
                     "metadata.KEY")
        assert_error(await c.post("/search?group_by=metadata.", files=query), 422, "invalid_parameter")
        assert_error(await c.post("/search?group_size=3", files=query), 422, "invalid_parameter", "group_size=3",
                     "needs group_by")
        assert_error(await c.post("/search?k=200&group_by=label&group_size=10", files=query), 422,
                     "invalid_parameter", "2000 items", "at most 1000")
        assert_error(await c.post("/batch/search?group_by=labels", files=query), 422, "invalid_parameter", "'labels'")
        r = await c.post("/search?group_by=label&group_size=0", files=query)
        assert r.status_code == 422, r.text
        await still_serving(c)


def test_the_service_limits_one_search_as_the_command_line_does_and_knows_milvus_s_index_kinds():
    import app._params
    import app._settings
    import index

    for name in ("MAX_K", "MAX_GROUP_SIZE", "MAX_GROUPED_RESULTS", "MAX_SEARCH_WINDOW"):
        assert getattr(app._params, name) == getattr(index, name), name
    assert app._settings.MILVUS_INDEXES == index.MILVUS_INDEX_KINDS
