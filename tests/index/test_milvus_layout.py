"""A Milvus gallery holding rows an older simsearch wrote (their `match` without paths into objects, or without
lists' elements): the filters those rows would answer wrongly are refused, naming how many rows are old and the
command that rewrites them; the filters they answer rightly keep working; after MilvusStore.upgrade_layout the
gallery answers every filter as the FAISS store does. Old rows are written as the older code wrote them: the
row of today's code with `match` as it was then (match_fields without paths, and without lists for layout 1)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from index import InvalidItemError, Item, MilvusConfig, MilvusStore  # noqa: E402
from index import _milvus  # noqa: E402
from index._milvus import match_fields  # noqa: E402

from .conftest import DIM, unit  # noqa: E402

MODEL = "test-model@000000000000"
_LIST_KINDS = tuple("axypq")   # the fields of lists' elements (layout 2)

METAS = {"old-cam": {"cam": {"make": "canon"}, "n": 1, "tags": ["x", "y"]},
         "old-nocam": {"n": 2, "tags": ["z"]},
         "old-plain": {"n": 3, "kind": "plain"},
         "new-cam": {"cam": {"make": "nikon"}, "n": 4, "tags": ["x"]}}


def old_match(label, meta: dict, layout: int) -> dict:
    """`match` as layout 2 (lists, no paths, no version) or layout 1 (neither) code wrote it."""
    match = match_fields(label, meta)
    if layout == 1:
        match = {k: v for k, v in match.items() if k == "l" or k[0] not in _LIST_KINDS}
    return match


def write_old(store: MilvusStore, items: list[Item], layout: int = 1) -> None:
    seq = store._next_seqs(len(items))
    rows = []
    for j, item in enumerate(items):
        row = store._row(item, store._check_vectors([item])[0], seq + j)
        rows.append({**row, "match": old_match(item.label, item.metadata or {}, layout)})
    store._client.upsert(store.collection, rows)


@pytest.fixture
def gallery(tmp_path, open_store):
    """(Milvus store with three old rows and one new, FAISS store with the same items, vectors)."""
    vecs = unit(np.random.default_rng(3), len(METAS))
    items = [Item(i, vecs[j], "cat" if j % 2 else None, m) for j, (i, m) in enumerate(METAS.items())]
    milvus = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id=MODEL))
    write_old(milvus, items[:3])
    milvus.upsert(items[3:])
    faiss = open_store()
    faiss.upsert(items)
    yield milvus, faiss, vecs
    milvus.close()


def _ids(store, where) -> list[str]:
    return sorted(i.id for i in store.list(where=where))


PATH_FILTERS = [{"cam.make": "canon"}, {"cam.make": {"$exists": True}}, {"cam.make": {"$exists": False}},
                {"cam.make": {"$ne": "nikon"}}, {"cam.make": {"$nin": ["nikon"]}}, {"cam.make": {"$gte": "a"}},
                {"$or": [{"n": 9}, {"cam.make": "canon"}]}]
LIST_FILTERS = [{"tags": "x"}, {"tags": {"$ne": "x"}}, {"tags": {"$in": ["y", "z"]}}, {"tags": {"$gt": "x"}}]


@pytest.mark.parametrize("where", PATH_FILTERS + LIST_FILTERS)
def test_a_filter_old_rows_would_answer_wrongly_is_refused_everywhere_naming_their_count_and_the_fix(gallery, where):
    milvus, _, vecs = gallery
    calls = [lambda: milvus.list(where=where), lambda: milvus.count(where=where),
             lambda: milvus.search(vecs[0], k=4, where=where), lambda: milvus.search_by_id("new-cam", where=where),
             lambda: milvus.search_grouped(vecs[:1], 2, "label", where=where),
             lambda: milvus.facets("label", where=where), lambda: milvus.delete_where(where=where),
             lambda: milvus.update_where(where=where, metadata_patch={"seen": True})]
    for call in calls:
        with pytest.raises(InvalidItemError) as err:
            call()
        assert "3 items" in str(err.value) and "simsearch index upgrade --milvus-uri URI --gallery default" in \
            str(err.value)
    assert milvus.count() == 4 and all("seen" not in i.metadata for i in milvus.list())   # nothing written


@pytest.mark.parametrize("where", [{"n": 1}, {"n": {"$ne": 2}}, {"n": {"$gte": 2}}, {"kind": {"$nin": ["plain"]}},
                                   {"$label": "cat"}, {"$label": {"$ne": "cat"}}, {"cam": {"$exists": True}},
                                   {"tags": {"$exists": False}}, {"$or": [{"n": 1}, {"$label": "cat"}]}])
def test_filters_the_old_rows_answer_rightly_keep_working_and_agree_with_the_faiss_store(gallery, where):
    milvus, faiss, vecs = gallery
    assert _ids(milvus, where) == _ids(faiss, where)
    assert milvus.count(where=where) == faiss.count(where=where)
    assert sorted(h.id for h in milvus.search(vecs[0], k=4, where=where)[0]) == _ids(faiss, where)


def test_upgrade_layout_rewrites_old_rows_only_then_every_filter_answers_as_the_faiss_store(gallery):
    milvus, faiss, vecs = gallery
    before = {i.id: i for i in milvus.items(milvus.ids())}
    order = milvus.ids()
    assert milvus.old_layout_rows() == 3
    assert milvus.upgrade_layout(page=2) == (3, [])
    assert milvus.old_layout_rows() == 0 and milvus.upgrade_layout() == (0, [])   # a second run: nothing left
    assert milvus.ids() == order   # the listing order kept
    for item in milvus.items(milvus.ids()):   # ids, vectors, labels, metadata and thumbnails kept
        want = before[item.id]
        assert (item.label, item.metadata, item.thumbnail) == (want.label, want.metadata, want.thumbnail)
        assert np.array_equal(item.vector, want.vector)
    for where in PATH_FILTERS + LIST_FILTERS:
        assert _ids(milvus, where) == _ids(faiss, where), where
        assert milvus.count(where=where) == faiss.count(where=where), where
        assert sorted(h.id for h in milvus.search(vecs[0], k=4, where=where)[0]) == _ids(faiss, where), where


def test_a_delete_by_a_path_filter_never_deletes_an_item_that_has_the_path(gallery):
    milvus, faiss, _ = gallery
    where = {"cam.make": {"$exists": False}}
    with pytest.raises(InvalidItemError):
        milvus.delete_where(where=where)
    assert milvus.get("old-cam") is not None
    milvus.upgrade_layout()
    assert sorted(milvus.delete_where(where=where)) == sorted(faiss.delete_where(where=where)) == \
        ["old-nocam", "old-plain"]
    assert sorted(milvus.ids()) == ["new-cam", "old-cam"]


def test_old_rows_without_objects_or_lists_under_the_filters_keys_leave_the_filter_answered(tmp_path):
    milvus = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id=MODEL))
    try:
        v = unit(np.random.default_rng(1), 2)
        write_old(milvus, [Item("a", v[0], None, {"n": 1, "tags": ["x"]})], layout=2)   # lists matched: layout 2
        milvus.upsert([Item("b", v[1], None, {"cam": {"make": "canon"}})])
        assert _ids(milvus, {"tags": {"$ne": "x"}}) == ["b"]   # layout 2 rows hold lists' elements
        assert _ids(milvus, {"cam.make": {"$exists": False}}) == ["a"]   # "a" holds no object under cam
        write_old(milvus, [Item("c", v[0], None, {"cam": {"make": "canon"}})], layout=2)
        with pytest.raises(InvalidItemError, match="2 items .* 1 of them"):
            milvus.list(where={"cam.make": {"$exists": False}})
    finally:
        milvus.close()


def test_a_gallery_found_without_old_rows_is_counted_again_after_a_while_and_after_its_own_upgrade(tmp_path,
                                                                                                   monkeypatch):
    milvus = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id=MODEL))
    try:
        v = unit(np.random.default_rng(2), 2)
        milvus.upsert([Item("new", v[0], None, {"cam": {"make": "nikon"}})])
        where = {"cam.make": "canon"}
        assert _ids(milvus, where) == []   # counted: no old rows, trusted for a while
        write_old(milvus, [Item("old", v[1], None, {"cam": {"make": "canon"}})])   # another process, older code
        assert _ids(milvus, where) == []   # within _CURRENT_FOR: not counted again
        monkeypatch.setattr(_milvus, "_CURRENT_FOR", 0.0)
        with pytest.raises(InvalidItemError, match="holds 1 item written"):
            milvus.list(where=where)
        monkeypatch.setattr(_milvus, "_CURRENT_FOR", 60.0)
        assert milvus.upgrade_layout() == (1, [])
        assert _ids(milvus, where) == ["old"]
    finally:
        milvus.close()
