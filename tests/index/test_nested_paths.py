"""Dotted paths into nested metadata (docs/index.md "Filters", "Nested objects"): a key with dots in `where`
(every operator, inside $or and $and), in a facet's or a group's `metadata.a.b`, reads the value of the nested
objects it names, never descending into a list; the same items in the FAISS store and in Milvus, through
search, count, list, facets, groups and every write. A key with a dot is refused on write; an item stored
before that keeps being found by its literal key."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import index
from index import InvalidItemError, Item
from index._filter import MISSING, lookup, nested_paths

from .conftest import DIM, unit
from . import test_list_filters
from .test_list_filters import _VALUES, random_where, reference

open_any = test_list_filters.open_any   # the fixture: a Store, or a MilvusStore on a Milvus Lite file

MODEL = "test-model@000000000000"


def at_path(meta: dict, key: str) -> tuple[bool, object]:
    """(has it, its value) at `key` as docs/index.md defines it, written out again for the test: the top-level
    key itself when the item has one, else the path through objects that the dots spell; no list is entered."""
    if dict.__contains__(meta, key):
        return True, dict.__getitem__(meta, key)
    node: object = meta
    for part in key.split("."):
        if not isinstance(node, dict) or not dict.__contains__(node, part):
            return False, None
        node = dict.__getitem__(node, part)
    return True, node


class _PathView(dict):
    """An item's metadata as `reference` (test_list_filters) reads a key of it (`in`, `get`), a dotted key as
    at_path reads it."""

    def __contains__(self, key) -> bool:
        return at_path(self, key)[0]

    def get(self, key, default=None):
        has, value = at_path(self, key)
        return value if has else default


def path_reference(meta: dict, where: dict) -> bool:
    return reference(_PathView(meta), where)


_METAS = [
    {"cam": {"make": "Canon", "iso": 100}},                           # 0
    {"cam": {"make": "Nikon", "iso": 400, "lens": {"mm": 50}}},       # 1: two deep
    {"cam": {"make": ["Canon", "Sony"]}},                             # 2: a list at the end of the path
    {"cam": "Canon"},                                                 # 3: not an object: the path stops
    {"cam": [{"make": "Canon"}]},                                     # 4: a list of objects: not entered
    {},                                                               # 5
    {"cam": {}},                                                      # 6
    {"cam": {"make": None, "iso": 100.0}},                            # 7: null, and 100.0 is 100
    {"cam": {"lens": {"mm": 35}}, "make": "Canon"},                   # 8: a top-level make is not cam.make
    {"cam": {"make": {"brand": "Canon"}}},                            # 9: an object at the end: exists, no value
]


@pytest.mark.parametrize("where, want", [
    ({"cam.make": "Canon"}, [0, 2]),
    ({"cam.make": {"$eq": "Sony"}}, [2]),
    ({"cam.make": {"$ne": "Canon"}}, [1, 3, 4, 5, 6, 7, 8, 9]),
    ({"cam.make": {"$in": ["Nikon", "Sony"]}}, [1, 2]),
    ({"cam.make": {"$nin": ["Canon", None]}}, [1, 3, 4, 5, 6, 8, 9]),
    ({"cam.make": {"$exists": True}}, [0, 1, 2, 7, 9]),
    ({"cam.make": {"$exists": False}}, [3, 4, 5, 6, 8]),
    ({"cam.make": None}, [7]),
    ({"cam.iso": 100}, [0, 7]),
    ({"cam.iso": {"$gte": 100, "$lt": 400}}, [0, 7]),
    ({"cam.make": {"$gte": "C", "$lt": "O"}}, [0, 1, 2]),
    ({"cam.lens.mm": {"$gt": 40}}, [1]),
    ({"cam.lens": {"$exists": True}}, [1, 8]),
    ({"cam.make.brand": "Canon"}, [9]),
    ({"cam": {"$exists": True}}, [0, 1, 2, 3, 4, 6, 7, 8, 9]),
    ({"cam": "Canon"}, [3]),
    ({"make": "Canon"}, [8]),
    ({"$or": [{"cam.make": "Nikon"}, {"cam.lens.mm": 35}]}, [1, 8]),
    ({"$and": [{"cam.make": {"$exists": True}}, {"cam.iso": {"$lt": 200}}]}, [0, 7]),
    ({"cam.make": "Canon", "$or": [{"cam.iso": 100}, {"cam.make": "Sony"}]}, [0, 2]),
])
def test_each_operator_on_a_dotted_key_reads_the_nested_value(open_any, where, want):
    store = open_any()
    vecs = unit(np.random.default_rng(3), len(_METAS))
    store.upsert([Item(f"n{i}", vecs[i], None, m) for i, m in enumerate(_METAS)])
    assert [i for i, m in enumerate(_METAS) if path_reference(m, where)] == want   # the test's own reading
    ids = [f"n{i}" for i in want]
    assert sorted(h.id for h in store.search(vecs[0], k=20, where=where)[0]) == ids
    assert store.count(where=where) == len(ids) and [it.id for it in store.list(where=where)] == ids


def test_facets_and_groups_of_a_dotted_field_read_the_nested_value(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(4), len(_METAS))
    store.upsert([Item(f"n{i}", vecs[i], None, m) for i, m in enumerate(_METAS)])
    facet = store.facets("metadata.cam.make")
    assert (facet.items, facet.values, facet.missing, facet.not_scalar) == \
        (10, [("Canon", 2), ("Nikon", 1), (None, 1), ("Sony", 1)], 5, 1)
    facet = store.facets("metadata.cam.lens.mm", where={"cam.iso": {"$exists": False}})
    assert (facet.items, facet.values, facet.missing) == (7, [(35, 1)], 6)
    assert store.index_metadata(["cam.make", "cam.nothing"]) == {"cam.make": 4, "cam.nothing": 0}
    # the groups: items n0, n1, n2 (its list: one group of its own, as `where` compares) and n9 (an object)
    groups = index.group_hits(store.search(vecs[0], k=20)[0], "metadata.cam.make")
    assert sorted((str(v), sorted(h.id for h in hits)) for v, hits in groups) == [
        ("Canon", ["n0"]), ("Nikon", ["n1"]), ("['Canon', 'Sony']", ["n2"]), ("{'brand': 'Canon'}", ["n9"])]
    over_any = index.search_grouped(lambda v, n: store.search(v, k=n), vecs[1], 10, "metadata.cam.make")[0]
    assert sorted(h.id for h in over_any) == ["n0", "n1", "n2", "n9"]


def test_each_stores_grouped_search_groups_by_a_dotted_path_as_grouping_its_hits_does(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(4), len(_METAS))
    store.upsert([Item(f"n{i}", vecs[i], None, m) for i, m in enumerate(_METAS)])
    for query in vecs[:3]:
        want = index.search_grouped(lambda v, n: store.search(v, k=n), query, 3, "metadata.cam.make", 2)[0]
        found = store.search_grouped(query, 3, "metadata.cam.make", 2)[0]
        assert [h.id for h in found] == [h.id for h in want] and len(found) == 3
        assert [h.id for h in index.search_hits(store, query, 10, group_by="metadata.cam.make")[0]] == \
            [h.id for h in index.search_grouped(lambda v, n: store.search(v, k=n), query, 10, "metadata.cam.make")[0]]


def test_a_path_goes_through_objects_only_and_a_literal_top_level_key_comes_first():
    meta = {"cam": {"make": "Canon", "lens": {"mm": 50}, "x.y": 1}, "a.b": 1, "a": {"b": 2, "c": {"d": 3}},
            "tags": [{"x": 1}], "s": "text"}
    assert lookup(meta, "cam.make") == "Canon" and lookup(meta, "cam.lens.mm") == 50
    assert lookup(meta, "a.b") == 1                                    # the item's own top-level "a.b"
    assert lookup(meta, "a.c.d") == 3
    for absent in ["tags.x", "tags.0.x", "s.length", "cam.x.y", "cam.nothing", "nothing.at.all", "cam.make.z"]:
        assert lookup(meta, absent) is MISSING, absent
    assert dict(nested_paths(meta)) == {"cam.make": "Canon", "cam.lens": {"mm": 50}, "cam.lens.mm": 50,
                                        "a.c": {"d": 3}, "a.c.d": 3}   # a.b: the top-level key's; x.y: no path


def test_a_key_with_a_dot_is_refused_on_write_at_any_depth_a_path_reaches_and_nothing_is_written(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(6), 2)
    for meta, key in [({"cam.make": "Canon"}, r"'cam\.make'"), ({"cam": {"lens.mm": 50}}, r"'lens\.mm' \(in 'cam'\)"),
                      ({"a": {"b": {"c.d": 1}}}, r"'c\.d' \(in 'a\.b'\)"), ({"ok": 1, ".": None}, r"'\.'")]:
        with pytest.raises(InvalidItemError, match=rf"item 'b': metadata: the key {key} holds a \"\.\""):
            store.upsert([Item("a", vecs[0], None, {"fine": 1}), Item("b", vecs[1], None, meta)])
        with pytest.raises(InvalidItemError, match="path into nested objects"):
            index.check_metadata(meta)
    assert store.count() == 0
    fine = {"faces": [{"x.y": 1}], "cost": "3.50", "cam": {"make": "Canon", "$raw": 1}}   # in a list, in a value
    store.upsert([Item("a", vecs[0], None, fine)])
    assert store.get("a").metadata == fine
    with pytest.raises(InvalidItemError, match=r"item 'a': the metadata patch: the key 'f\.number' \(in 'cam'\)"):
        store.update("a", metadata_patch={"cam": {"f.number": 2.8}})
    with pytest.raises(InvalidItemError, match=r"the key 'cam\.model'"):
        store.update_where(where={"cam.make": "Canon"}, metadata_patch={"cam.model": "R5"})
    assert store.get("a").metadata == fine
    assert store.update("a", metadata_patch={"cam.gone": None, "cam": {"iso": 100}}).metadata == \
        {**fine, "cam": {"make": "Canon", "$raw": 1, "iso": 100}}   # a dotted key given as null: removes nothing here


def test_milvus_match_holds_each_nested_path_as_a_key_of_its_own_after_an_older_items_literal_key():
    from index._milvus import _key_fields, match_fields, path_fields

    meta = {"a.b": 1, "a": {"b": 2, "c": {"d": "x"}, "e.f": 3}, "l": [{"g": 1}]}
    assert path_fields(meta) == {**_key_fields("a.c", {"d": "x"}), **_key_fields("a.c.d", "x")}
    assert match_fields(None, meta) == {**_key_fields("a.b", 1), **_key_fields("a", meta["a"]),
                                        **_key_fields("l", meta["l"])}   # the top-level keys alone, as before


def _old_items_with_dotted_keys(store, kind: str, vecs: np.ndarray) -> list[dict]:
    """Items as a store written before dotted keys were refused holds them: "lit" with the literal top-level key
    "cam.make", "both" with that key and a nested cam.make, "new" nested only. The FAISS store's rows changed in
    SQLite (then reopened), Milvus's rows written whole."""
    metas = [{"cam.make": "Canon", "n": 1}, {"cam.make": "Nikon", "cam": {"make": "Canon"}, "n": 2},
             {"cam": {"make": "Canon"}, "n": 3}]
    ids = ["lit", "both", "new"]
    store.upsert([Item(i, vecs[j], None, {"n": j + 1}) for j, i in enumerate(ids)])
    if kind == "milvus":
        rows = [store._row(Item(i, vecs[j], None, metas[j]), vecs[j], j + 1, patched=True) for j, i in enumerate(ids)]
        store._client.upsert(store.collection, rows)
        return metas
    store.close()
    with sqlite3.connect(store.config.path / "store.sqlite3") as conn:
        for i, m in zip(ids, metas):
            conn.execute("UPDATE items SET metadata = ? WHERE id = ?", (index._checks._metadata_json(m, "m"), i))
    return metas


@pytest.mark.parametrize("kind", ["faiss", "milvus"])
def test_an_item_stored_with_a_dotted_key_before_is_found_by_that_key_first_and_sheds_it(open_store, tmp_path, kind):
    vecs = unit(np.random.default_rng(8), 3)
    if kind == "faiss":
        metas = _old_items_with_dotted_keys(open_store(), kind, vecs)
        store = open_store()   # reopened: the rows are read again
    else:
        pytest.importorskip("pymilvus")
        from index import MilvusConfig, MilvusStore
        store = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id=MODEL))
        metas = _old_items_with_dotted_keys(store, kind, vecs)
    try:
        assert store.get("lit").metadata == metas[0]
        for where, want in [({"cam.make": "Canon"}, ["lit", "new"]),   # "both": its own "cam.make" is Nikon
                            ({"cam.make": "Nikon"}, ["both"]), ({"cam.make": {"$ne": "Canon"}}, ["both"]),
                            ({"cam.make": {"$exists": True}}, ["lit", "both", "new"]), ({"cam": {"$exists": True}},
                                                                                       ["both", "new"])]:
            assert [it.id for it in store.list(where=where)] == want, where
            assert sorted(h.id for h in store.search(vecs[0], k=5, where=where)[0]) == sorted(want), where
        assert store.facets("metadata.cam.make").values == [("Canon", 2), ("Nikon", 1)]
        # an edit that leaves the key alone keeps it; a patch giving it as null removes it, and the path reads on
        assert store.update("both", metadata_patch={"n": 5}).metadata == {**metas[1], "n": 5}
        assert store.update("both", metadata_patch={"cam.make": None}).metadata == {"cam": {"make": "Canon"}, "n": 5}
        assert [it.id for it in store.list(where={"cam.make": "Canon"})] == ["lit", "both", "new"]
    finally:
        store.close()


def test_writes_move_an_item_in_and_out_of_a_paths_index(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(9), 3)
    store.upsert([Item("a", vecs[0], None, {"cam": {"make": "Canon"}}), Item("b", vecs[1], None, {"n": 1})])

    def canon():
        return [it.id for it in store.list(where={"cam.make": "Canon"})]

    assert canon() == ["a"]   # the path's index built here (FAISS), kept current by each write below
    store.upsert([Item("c", vecs[2], None, {"cam": {"make": "Canon", "iso": 100}})])
    assert canon() == ["a", "c"]
    store.update("a", metadata_patch={"cam": {"make": "Sony"}})
    assert canon() == ["c"] and store.count(where={"cam.make": "Sony"}) == 1
    store.update("b", metadata_patch={"cam": {"make": "Canon"}})
    assert canon() == ["b", "c"]
    store.update_where(where={"cam.iso": 100}, metadata_patch={"cam": None})
    assert canon() == ["b"] and store.count(where={"cam": {"$exists": True}}) == 2
    store.delete(["b"])
    assert canon() == [] and store.facets("metadata.cam.make").values == [("Sony", 1)]
    store.upsert([Item("b", vecs[1], None, {"cam": {"make": ["Canon"]}})])
    assert canon() == ["b"]


def test_a_path_no_item_has_costs_no_index_and_top_level_keys_keep_their_own(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(10), 2)
    store.upsert([Item("a", vecs[0], None, {"cam": {"make": "Canon"}, "year": 2024}),
                  Item("b", vecs[1], None, {"year": 2025})])
    assert store.count(where={"year": 2024}) == 1
    assert store.count(where={"cam.model": "R5"}) == 0 and store.count(where={"nothing.here": 1}) == 0
    assert "cam.model" not in store._meta.by_key and "nothing.here" not in store._meta.by_key
    assert store.count(where={"cam.make": "Canon"}) == 1 and "cam.make" in store._meta.by_key
    store.upsert([Item("c", vecs[1], None, {"cam": {"model": "R5"}})])   # the path now exists: it is counted
    assert store.count(where={"cam.model": "R5"}) == 1


_OBJECT_VALUES = _VALUES[:-1] + [[1, "x"], {"o": 1}]


def _random_nested(rng: np.random.Generator) -> dict:
    """Metadata with k0 at the top, k1 and k3 inside the object "o" and k2 inside "o"'s "p"; now and then "o" or
    "p" is a scalar, a list of objects or absent, where a path stops."""
    def value():
        return _OBJECT_VALUES[rng.integers(len(_OBJECT_VALUES))]

    meta: dict = {"k0": value()} if rng.random() < 0.7 else {}
    roll = rng.random()
    if roll < 0.7:
        inner = {k: value() for k in ("k1", "k3") if rng.random() < 0.7}
        p_roll = rng.random()
        if p_roll < 0.6:
            inner["p"] = {"k2": value()} if rng.random() < 0.8 else {}
        elif p_roll < 0.75:
            inner["p"] = value()
        meta["o"] = inner
    elif roll < 0.8:
        meta["o"] = [{"k1": value(), "p": {"k2": value()}}]
    elif roll < 0.9:
        meta["o"] = value()
    return meta


_PATHS = {"k0": "k0", "k1": "o.k1", "k2": "o.p.k2", "k3": "o.k3"}


def _on_paths(where):
    """random_where's filter on k0..k3 with each key replaced by its path (_PATHS)."""
    if isinstance(where, list):
        return [_on_paths(w) for w in where]
    if not isinstance(where, dict):
        return where
    return {_PATHS.get(k, k): (_on_paths(v) if k in ("$or", "$and") else v) for k, v in where.items()}


def test_random_filters_on_nested_paths_select_the_same_items_in_milvus_the_faiss_store_and_the_reference(
        open_store, tmp_path):
    """The random-filter reference test (test_milvus.py) over nested metadata and dotted paths: every operator,
    $or and $and nested, values of every JSON type, paths that stop at a scalar, a list or nothing."""
    pytest.importorskip("pymilvus")
    from index import MilvusConfig, MilvusStore

    rng = np.random.default_rng(31)
    metas = [_random_nested(rng) for _ in range(240)]
    vecs = unit(rng, len(metas))
    items = [Item(f"m{i:03d}", vecs[i], None, m) for i, m in enumerate(metas)]
    milvus = MilvusStore.open(MilvusConfig(uri=str(tmp_path / "m.db"), dim=DIM, model_id=MODEL))
    faiss_store = open_store()
    try:
        milvus.upsert(items)
        faiss_store.upsert(items)
        told_apart = 0
        for _ in range(150):
            where = _on_paths(random_where(rng, _VALUES[:-1], keys=4))   # scalars only
            want = [f"m{i:03d}" for i, m in enumerate(metas) if path_reference(m, where)]
            assert [it.id for it in faiss_store.list(limit=1000, where=where)] == want, where
            assert [it.id for it in milvus.list(limit=1000, where=where)] == want, where
            told_apart += 0 < len(want) < len(metas)
        assert told_apart > 50   # the filters tell items apart, rather than keeping all or none
        for field in ("metadata.o.k1", "metadata.o.p.k2", "metadata.o.p"):
            assert milvus.facets(field) == faiss_store.facets(field), field
    finally:
        milvus.close()
