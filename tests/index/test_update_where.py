"""update_where: every item a label and/or a where filter selects gets a new label and/or a metadata merge patch,
as `update` gives one item, in the FAISS store and in Milvus alike: filters on the new values find them at once,
an item whose patched metadata would be refused refuses the whole call with nothing changed, and no selection is
refused. In the FAISS store the change is one write: one transaction, one edit in the position, followed by a
read-only store at once, never seen half-made by a search, and undone whole when the transaction fails."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from index import InvalidItemError, Item

from . import test_list_filters
from .conftest import unit

open_any = test_list_filters.open_any   # the fixture: a Store, or a MilvusStore on a Milvus Lite file

# (label, metadata) of each item
_ITEMS = [("cat", {"year": 2023, "tags": ["pet", "indoor"]}), ("dog", {"year": 2024, "tags": ["pet"]}),
          (None, {"year": 2023}), ("cat", {"year": 2025, "tags": ["wild"]}), ("bird", {"tags": ["pet", "wild"]})]


def _stored(store) -> np.ndarray:
    vecs = unit(np.random.default_rng(7), len(_ITEMS))
    store.upsert([Item(f"i{i}", vecs[i], label, meta, thumbnail=b"\xff\xd8jpeg")
                  for i, (label, meta) in enumerate(_ITEMS)])
    return vecs


def _state(store) -> list[tuple]:
    return [(it.id, it.label, it.metadata) for it in store.list(limit=100)]


def test_a_metadata_patch_changes_the_items_a_list_value_filter_selects_and_no_others(open_any):
    store = open_any()
    vecs = _stored(store)
    before = _state(store)
    assert store.count(where={"album": "pets"}) == 0   # a filter on the key first: its index is then kept current
    changed = store.update_where(where={"tags": "pet"}, metadata_patch={"album": "pets", "year": None})
    assert sorted(changed) == ["i0", "i1", "i4"]
    want = {"i0": {"tags": ["pet", "indoor"], "album": "pets"}, "i1": {"tags": ["pet"], "album": "pets"},
            "i4": {"tags": ["pet", "wild"], "album": "pets"}}
    assert _state(store) == [(id_, label, want.get(id_, meta)) for id_, label, meta in before]   # order kept
    # the filters on the new values (and on the removed one) find them at once: count, list, search, facets
    assert store.count(where={"album": "pets"}) == 3
    assert [it.id for it in store.list(where={"album": {"$in": ["pets"]}})] == ["i0", "i1", "i4"]
    assert sorted(h.id for h in store.search(vecs[2], k=10, where={"album": "pets"})[0]) == ["i0", "i1", "i4"]
    assert [it.id for it in store.list(where={"year": {"$exists": True}})] == ["i2", "i3"]
    assert store.facets("metadata.album").values == [("pets", 3)]
    # vectors and thumbnails stay
    assert store.search(vecs[1], k=1)[0][0].id == "i1" and store.thumbnail("i1") == b"\xff\xd8jpeg"
    assert np.allclose(store.get("i4").vector, vecs[4], atol=1e-6)


def test_a_new_label_goes_to_the_items_a_label_filter_selects_and_label_conditions_find_it(open_any):
    store = open_any()
    _stored(store)
    assert store.count(where={"$label": "kitten"}) == 0
    assert sorted(store.update_where(where={"$label": "cat", "year": {"$gte": 2025}}, new_label="kitten")) == ["i3"]
    assert [it.id for it in store.list(where={"$label": "kitten"})] == ["i3"]
    assert store.count(label="kitten") == 1 and store.count(label="cat") == 1
    assert store.get("i3").metadata == _ITEMS[3][1]   # the metadata kept
    # the label parameter selects; None removes the label; label and patch at once
    assert store.update_where(label="cat", new_label=None, metadata_patch={"was": "cat"}) == ["i0"]
    assert store.get("i0").label is None and store.get("i0").metadata["was"] == "cat"
    assert [it.id for it in store.list(where={"$label": {"$exists": False}})] == ["i0", "i2"]
    assert store.labels() == {None: 2, "bird": 1, "dog": 1, "kitten": 1}


def test_nothing_matching_changes_nothing(open_any):
    store = open_any()
    _stored(store)
    before, position = _state(store), store.position()
    assert store.update_where(where={"year": 1999}, metadata_patch={"x": 1}) == []
    assert _state(store) == before and store.position() == position


def test_one_item_whose_patched_metadata_would_be_too_large_refuses_the_call_and_nothing_changes(open_any,
                                                                                              monkeypatch):
    import index._milvus

    monkeypatch.setattr(index._milvus, "_PAGE", 1)   # Milvus: the items before the big one in pages of their own
    store = open_any()
    vecs = _stored(store)
    store.upsert([Item("zbig", vecs[0], "cat", {"year": 2023, "notes": "x" * 60_000})])
    before, position = _state(store), store.position()
    with pytest.raises(InvalidItemError, match="item 'zbig'.*bytes of JSON"):
        store.update_where(where={"year": 2023}, metadata_patch={"more": "y" * 6000})
    assert _state(store) == before and store.position() == position
    assert store.count(where={"more": {"$exists": True}}) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"metadata_patch": {"a": 1}}, "needs a label or a where filter"),
    ({"where": {}, "metadata_patch": {"a": 1}}, "non-empty object"),
    ({"label": "cat"}, "nothing to change"),
    ({"label": "cat", "metadata_patch": {"$label": "dog"}}, "starts with"),
    ({"label": "cat", "metadata_patch": ["a"]}, "must be a JSON object"),
    ({"label": "cat", "new_label": 5}, "new_label must be a string or None"),
])
def test_a_call_without_a_selection_or_a_change_or_with_a_bad_one_is_refused(open_any, kwargs, message):
    store = open_any()
    _stored(store)
    before = _state(store)
    with pytest.raises(InvalidItemError, match=message):
        store.update_where(**kwargs)
    assert _state(store) == before


def test_milvus_rewrites_the_rows_page_by_page_keeping_their_place_in_the_listing(open_any, monkeypatch):
    store = open_any()
    if type(store).__name__ != "MilvusStore":
        pytest.skip("Milvus's pages")
    import index._milvus

    monkeypatch.setattr(index._milvus, "_PAGE", 2)   # five items: three pages
    _stored(store)
    assert store.update_where(where={"$or": [{"year": {"$exists": True}}, {"tags": "wild"}]},
                              metadata_patch={"seen": True}) == ["i0", "i1", "i2", "i3", "i4"]
    assert store.count(where={"seen": True}) == 5
    assert [it.id for it in store.list()] == ["i0", "i1", "i2", "i3", "i4"]


# ---- the FAISS store: one write --------------------------------------------------------------------------------


def test_the_change_is_one_edit_that_a_following_store_applies_at_once(open_store, tmp_path):
    writer = open_store()
    vecs = _stored(writer)
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    reader.count(where={"album": "pets"})   # its index of the key kept current from now on
    seq, edits = map(int, writer.position().split("."))
    writer.update_where(where={"tags": "pet"}, new_label="animal", metadata_patch={"album": "pets"})
    assert writer.position() == f"{seq}.{edits + 1}"   # one write, not one an item
    assert reader.refresh() == (0, 0, 3)
    assert reader.position() == writer.position()
    assert [it.id for it in reader.list(where={"album": "pets", "$label": "animal"})] == ["i0", "i1", "i4"]
    assert [h.id for h in reader.search(vecs[4], k=1, where={"album": "pets"})[0]] == ["i4"]


def test_a_transaction_that_fails_part_way_leaves_every_item_as_it_was(open_store, tmp_path):
    store = open_store()
    _stored(store)
    before, position = _state(store), store.position()
    with sqlite3.connect(tmp_path / "store" / "store.sqlite3") as conn:   # the third row's UPDATE fails
        conn.execute("CREATE TRIGGER boom BEFORE UPDATE ON items WHEN NEW.id = 'i4' "
                     "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.Error, match="boom"):
        store.update_where(where={"tags": "pet"}, metadata_patch={"album": "pets"})
    assert _state(store) == before and store.position() == position
    assert store.count(where={"album": "pets"}) == 0
    with sqlite3.connect(tmp_path / "store" / "store.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE metadata LIKE '%pets%'").fetchone() == (0,)


def test_a_search_during_the_change_sees_none_of_it_or_all_of_it(open_store):
    store = open_store()
    n = 3000
    store.upsert([Item(f"i{k}", v, None, {"k": k}) for k, v in enumerate(unit(np.random.default_rng(1), n))])
    seen, done = set(), threading.Event()

    def read():
        while not done.is_set():
            seen.add(store.count(where={"album": "all"}))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            store.update_where(where={"k": {"$gte": 0}}, metadata_patch={"album": "all"})
            store.update_where(where={"k": {"$gte": 0}}, metadata_patch={"album": None})
    finally:
        done.set()
        reader.join()
    assert seen <= {0, n}, sorted(seen)[:10]
