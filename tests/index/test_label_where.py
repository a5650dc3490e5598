"""The label inside `where` ("$label", docs/index.md "Filters"): each operator on the items' labels, an
unlabelled item as an item without a metadata key, mixed with metadata keys under $or and $and, the same in the
FAISS store and in Milvus, through search, count, list, facets and delete_where; and metadata keys that start
with "$" (which no filter could find) refused on every write, while items stored with one before still load."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import index
from index import InvalidItemError, Item

from . import test_list_filters
from .conftest import DIM, unit
from .test_list_filters import _VALUES, random_where, reference

open_any = test_list_filters.open_any   # the fixture: a Store, or a MilvusStore on a Milvus Lite file

# (label, metadata) of each item: the metadata key "label" is a key like any other, not the label
_ITEMS = [("cat", {"year": 2023}), ("dog", {"year": 2024}), (None, {"year": 2023}), ("cat", {"year": 2025}),
          ("bird", {"label": "cat"}), (None, {}), ("Cat", {"year": 2024}), ("", {"year": 2023})]


def _stored(store) -> np.ndarray:
    vecs = unit(np.random.default_rng(5), len(_ITEMS))
    store.upsert([Item(f"i{i}", vecs[i], label, meta) for i, (label, meta) in enumerate(_ITEMS)])
    return vecs


def _with_label(meta: dict, label: str | None) -> dict:
    """An item's metadata with its label as the key "$label", for `reference` to read as any other key."""
    return meta if label is None else {**meta, "$label": label}


_CASES = [
    ({"$label": "cat"}, [0, 3]),                               # exactly: not "Cat", not the metadata key "label"
    ({"$label": {"$eq": "cat"}}, [0, 3]),
    ({"$label": ""}, [7]),                                     # the empty label is a label
    ({"$label": {"$in": ["cat", "dog"]}}, [0, 1, 3]),
    ({"$label": {"$ne": "cat"}}, [1, 2, 4, 5, 6, 7]),          # the unlabelled too, as an item without a key
    ({"$label": {"$nin": ["cat", "dog", ""]}}, [2, 4, 5, 6]),
    ({"$label": {"$exists": False}}, [2, 5]),
    ({"$label": {"$exists": True}}, [0, 1, 3, 4, 6, 7]),
    ({"$label": {"$gte": "b", "$lt": "d"}}, [0, 3, 4]),        # strings by code point: "Cat" < "b"
    ({"$label": {"$lte": "C"}}, [7]),
    ({"$label": "cat", "year": 2023}, [0]),
    ({"$or": [{"$label": "dog"}, {"year": {"$gte": 2025}}]}, [1, 3]),
    ({"$or": [{"$label": {"$exists": False}}, {"label": "cat"}]}, [2, 4, 5]),
    ({"$and": [{"$label": {"$ne": "cat"}}, {"$or": [{"year": 2023}, {"$label": "bird"}]}]}, [2, 4, 7]),
    ({"label": "cat"}, [4]),                                   # a metadata key called "label": still that
    ({"$label": "nobody"}, []),
]


def test_a_facet_of_metadata_dollar_label_reads_a_metadata_key_of_that_name_not_the_labels(open_any):
    # "$label" names the label inside a filter only: a facet (or a group) of metadata.$label reads the metadata,
    # where no item written today has such a key, the same in both stores
    store = open_any()
    _stored(store)
    got = store.facets("metadata.$label")
    assert (got.items, got.values, got.missing) == (len(_ITEMS), [], len(_ITEMS))
    assert store.facets("label").values != []


def test_each_label_condition_selects_the_items_by_their_label_in_search_count_list_and_facets(open_any):
    store = open_any()
    vecs = _stored(store)
    for where, want in _CASES:
        assert [i for i, (label, meta) in enumerate(_ITEMS) if reference(_with_label(meta, label), where)] == want
        ids = [f"i{i}" for i in want]
        assert sorted(h.id for h in store.search(vecs[0], k=20, where=where)[0]) == ids, where
        assert [it.id for it in store.list(where=where)] == ids, where
        assert store.count(where=where) == len(ids), where
        assert store.facets("label", where=where).items == len(ids), where
        assert sorted(h.id for h in store.search_by_id("i0", k=20, where=where)) == [i for i in ids if i != "i0"]


def test_the_label_parameter_and_a_label_condition_must_both_hold(open_any):
    store = open_any()
    vecs = _stored(store)
    assert store.count(label="cat", where={"$label": {"$in": ["cat", "dog"]}}) == 2
    assert store.count(label="cat", where={"$label": {"$ne": "cat"}}) == 0
    assert store.count(label="dog", where={"$or": [{"$label": "cat"}, {"year": 2024}]}) == 1
    assert [h.id for h in store.search(vecs[0], k=5, label="cat", where={"$label": "dog"})[0]] == []
    facet = store.facets("metadata.year", where={"$label": {"$ne": "cat"}})
    assert (facet.items, sorted(facet.values), facet.missing) == (6, [(2023, 2), (2024, 2)], 2)


def test_delete_where_on_a_label_condition_removes_exactly_those_items(open_any):
    store = open_any()
    _stored(store)
    assert sorted(store.delete_where(where={"$label": {"$nin": ["cat", "dog"]}})) == ["i2", "i4", "i5", "i6", "i7"]
    assert [it.id for it in store.list()] == ["i0", "i1", "i3"]
    assert store.delete_where(label="cat", where={"$label": {"$exists": False}}) == []


def test_a_label_condition_follows_every_write_that_changes_a_label(open_any):
    store = open_any()
    vecs = _stored(store)
    store.update("i2", label="cat")                        # unlabelled -> cat
    store.update("i0", label=None)                         # cat -> unlabelled
    store.delete(["i3"])
    store.upsert([Item("i9", vecs[0], "cat", {})])
    assert [it.id for it in store.list(where={"$label": "cat"})] == ["i2", "i9"]
    assert [it.id for it in store.list(where={"$label": {"$exists": False}})] == ["i0", "i5"]


@pytest.mark.parametrize("where, words", [
    ({"$label": 1}, ["'$label'", "must be a string", "got 1"]),
    ({"$label": None}, ["'$label'", "must be a string", '{"$label": {"$exists": false}}']),
    ({"$label": True}, ["must be a string", "got True"]),
    ({"$label": ["cat"]}, ["must be a string", "['cat']"]),
    ({"$label": {"$in": ["cat", 2]}}, ["'$label'.$in", "got 2"]),
    ({"$label": {"$gt": 5}}, ["'$label'.$gt", "must be a string", "got 5"]),
    ({"$label": {"$regex": "c.*"}}, ["unknown operator", "'$regex'"]),
    ({"$or": [{"$label": {"$ne": None}}]}, ["$or[0]", "'$label'.$ne"]),
    ({"$labels": "cat"}, ["'$labels'", "$label"]),            # an unknown $-key, named
    ({"$where": "1"}, ["'$where'", "$or, $and"]),
])
def test_a_label_condition_on_anything_but_a_string_and_unknown_dollar_keys_are_refused(where, words):
    with pytest.raises(InvalidItemError) as err:
        index.check_where(where)
    assert all(w in str(err.value) for w in words), str(err.value)


_LABELS = ["cat", "dog", "Cat", "", "é✓", 'q"uote', "back\\slash", "2020", "x"]


def test_random_filters_with_label_conditions_select_what_the_reference_says(open_any):
    """random_where draws "$label" conditions among metadata ones; the reference reads the label as the key
    "$label" (an unlabelled item: without it), so each store is checked item by item."""
    rng = np.random.default_rng(23)
    labels = [_LABELS[rng.integers(len(_LABELS))] if rng.random() < 0.75 else None for _ in range(160)]
    metas = [{f"k{k}": _VALUES[rng.integers(len(_VALUES) - 1)] for k in range(2) if rng.random() < 0.7}
             for _ in labels]
    vecs = unit(rng, len(metas))
    store = open_any()
    store.upsert([Item(f"m{i:03d}", vecs[i], label, m) for i, (label, m) in enumerate(zip(labels, metas))])
    told_apart = on_labels = 0
    for _ in range(120):
        where = random_where(rng, _VALUES[:-1], keys=2, labels=_LABELS)
        want = [f"m{i:03d}" for i, (label, m) in enumerate(zip(labels, metas))
                if reference(_with_label(m, label), where)]
        assert [it.id for it in store.list(limit=1000, where=where)] == want, where
        told_apart += 0 < len(want) < len(metas)
        on_labels += "$label" in str(where)
    assert told_apart > 50 and on_labels > 40


# ---- metadata keys that start with "$" ----------------------------------------------------------

def test_a_metadata_key_starting_with_dollar_is_refused_on_add_naming_it_and_nothing_is_written(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(6), 2)
    for meta in [{"$label": "cat"}, {"ok": 1, "$or": [1]}, {"$": None}]:
        with pytest.raises(InvalidItemError, match=r"item 'b': metadata: the key '\$[a-z]*' starts with \"\$\""):
            store.upsert([Item("a", vecs[0], None, {"fine": 1}), Item("b", vecs[1], None, meta)])
        with pytest.raises(InvalidItemError, match="starts with"):
            index.check_metadata(meta)
    assert store.count() == 0
    store.upsert([Item("a", vecs[0], None, {"cost": "$5", "nested": {"$ok": 1}, "a$": 2})])   # only a key's start
    assert store.get("a").metadata == {"cost": "$5", "nested": {"$ok": 1}, "a$": 2}


def test_a_metadata_patch_may_not_set_a_dollar_key_but_may_remove_one(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(7), 1)
    store.upsert([Item("a", vecs[0], "cat", {"n": 1})])
    with pytest.raises(InvalidItemError, match=r"item 'a': the metadata patch: the key '\$x'"):
        store.update("a", metadata_patch={"n": 2, "$x": 1})
    assert store.get("a").metadata == {"n": 1}
    assert store.update("a", metadata_patch={"$x": None, "n": 3}).metadata == {"n": 3}


def _old_item_with_a_dollar_key(store, kind: str, vecs: np.ndarray) -> None:
    """Items "old" (metadata {"$old": 1, "n": 1}, labelled "cat") and "new", as a store written before "$" keys
    were refused holds them: the FAISS store's row changed in SQLite (then reopened), Milvus's row written whole."""
    store.upsert([Item("old", vecs[0], "cat", {"n": 1}), Item("new", vecs[1], "cat", {"n": 2})])
    if kind == "milvus":
        row = store._row(Item("old", vecs[0], "cat", {"$old": 1, "n": 1}), vecs[0], 1, patched=True)
        store._client.upsert(store.collection, [row])
        return
    store.close()
    with sqlite3.connect(store.config.path / "store.sqlite3") as conn:
        conn.execute("""UPDATE items SET metadata = '{"$old":1,"n":1}' WHERE id = 'old'""")


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_an_item_stored_with_a_dollar_key_before_still_loads_is_filtered_by_its_other_keys_and_sheds_it(
        open_store, tmp_path, kind):
    vecs = unit(np.random.default_rng(8), 2)
    if kind == "faiss":
        _old_item_with_a_dollar_key(open_store(), kind, vecs)
        store = open_store()   # reopened: the rows are read again
    else:
        pytest.importorskip("pymilvus")
        from index import MilvusConfig, MilvusStore
        store = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id="test-model@000000000000"))
        _old_item_with_a_dollar_key(store, kind, vecs)
    try:
        assert store.get("old").metadata == {"$old": 1, "n": 1}
        assert [h.id for h in store.search(vecs[0], k=1, where={"n": 1})[0]] == ["old"]
        assert store.count(where={"$label": "cat"}) == 2   # "$label" is the label, never the key
        # an edit that leaves the key alone keeps it; a patch giving it as null removes it
        assert store.update("old", label="dog", metadata_patch={"n": 5}).metadata == {"$old": 1, "n": 5}
        assert store.update("old", metadata_patch={"$old": None}).metadata == {"n": 5}
        assert store.get("old").metadata == {"n": 5}
    finally:
        store.close()
