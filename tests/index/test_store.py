"""Store behaviour: writes, reads, search options, validation, model records (real FAISS, real SQLite)."""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest

from index import (PRESET_NAMES, InvalidItemError, Item, ModelMismatchError, ReadOnlyError, Store,
                   StoreConfig, StoreError, StoreLockedError)

from .conftest import DIM, unit
from .test_list_filters import reference as _reference  # what each operator means, lists too

APPROX = [p for p in PRESET_NAMES if p != "flat"]


def _fill(store: Store, vecs: np.ndarray, labels=None, prefix="id") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(len(vecs))]
    store.upsert([Item(ids[i], vecs[i], label=None if labels is None else labels[i], metadata={"i": i})
                  for i in range(len(vecs))])
    return ids


def test_upsert_then_get_returns_normalised_vector_label_metadata_and_thumbnail(open_store):
    store = open_store()
    v = np.arange(1, DIM + 1, dtype=np.float32)
    assert store.upsert([Item("a", v, label="cat", metadata={"k": [1, 2]}, thumbnail=b"\xff\xd8jpeg")]) == 1
    item = store.get("a")
    assert item.label == "cat" and item.metadata == {"k": [1, 2]}
    np.testing.assert_allclose(item.vector, v / np.linalg.norm(v), rtol=1e-6)
    assert store.thumbnail("a") == b"\xff\xd8jpeg"
    assert store.get("missing") is None and store.thumbnail("missing") is None
    assert store.count() == 1


@pytest.mark.parametrize("kind", PRESET_NAMES)
def test_delete_readd_and_upsert_replace_in_every_index_kind(open_store, kind):
    rng = np.random.default_rng(1)
    store = open_store(index=kind, train_threshold=300)
    vecs = unit(rng, 400)
    ids = _fill(store, vecs)
    assert store.info()["exact"] is (kind == "flat")
    # delete: gone from get, count and search
    assert store.delete(["id5", "nope"]) == ["id5"]
    assert store.get("id5") is None and store.count() == 399
    assert all(h.id != "id5" for h in store.search(vecs[5], k=10)[0])
    # re-add the deleted id
    store.upsert([Item("id5", vecs[5], label="back")])
    top = store.search(vecs[5], k=1)[0][0]
    assert (top.id, top.label) == ("id5", "back") and store.count() == 400
    # upsert replaces: the old vector no longer finds the item, the new one does
    new = unit(rng, 1)[0]
    store.upsert([Item("id7", new, label="new", metadata={"v": 2})])
    assert store.count() == 400
    assert store.search(new, k=1)[0][0].id == "id7"
    assert all(h.id != "id7" for h in store.search(vecs[7], k=5)[0])
    assert store.get("id7").metadata == {"v": 2} and store.get("id7").label == "new"
    assert ids[0] in store and "id5" in store


def test_get_many_returns_one_entry_per_id_in_order_with_none_where_absent(open_store):
    rng = np.random.default_rng(3)
    store = open_store()
    vecs = unit(rng, 1200)
    ids = _fill(store, vecs, labels=[f"l{i % 3}" for i in range(1200)])
    store.delete(["id5"])
    asked = ["id7", "nope", "id5", "id1199", "id7"] + ids[600:1100]   # more than one query's worth
    got = store.get_many(asked)
    assert len(got) == len(asked)
    assert got[1] is None and got[2] is None
    for want, item in zip(asked, got):
        if item is not None:
            single = store.get(want)
            assert item.id == want and item.label == single.label and item.metadata == single.metadata
            np.testing.assert_array_equal(item.vector, single.vector)
    assert store.get_many([]) == []


def test_duplicate_ids_in_one_upsert_keep_the_last(open_store):
    store = open_store()
    a, b = unit(np.random.default_rng(2), 2)
    assert store.upsert([Item("x", a, label="first"), Item("x", b, label="last")]) == 1
    assert store.count() == 1 and store.get("x").label == "last"
    assert store.search(b, k=5)[0][0].id == "x" and len(store.search(b, k=5)[0]) == 1


def test_upsert_without_thumbnail_drops_the_old_thumbnail(open_store):
    store = open_store()
    v = unit(np.random.default_rng(3), 1)[0]
    store.upsert([Item("t", v, thumbnail=b"old")])
    store.upsert([Item("t", v)])
    assert store.thumbnail("t") is None


@pytest.mark.parametrize("kind", PRESET_NAMES)
def test_label_filter_returns_k_items_of_that_label_when_k_exist(open_store, kind):
    rng = np.random.default_rng(4)
    store = open_store(index=kind, train_threshold=500)
    vecs = unit(rng, 2000)
    labels = ["rare" if i % 200 == 0 else f"c{i % 4}" for i in range(2000)]  # 10 rare items
    _fill(store, vecs, labels)
    q = unit(rng, 5)
    for hits in store.search(q, k=8, label="rare"):
        assert len(hits) == 8 and {h.label for h in hits} == {"rare"}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # asking for more than exist returns all of them
    assert len(store.search(q[0], k=50, label="rare")[0]) == 10
    assert store.search(q[0], k=5, label="no-such-label") == [[]]
    # exact check of the filtered answer against brute force
    rare = np.array([i for i in range(2000) if labels[i] == "rare"])
    best = rare[np.argsort(-(vecs[rare] @ q[0]))[:8]]
    assert [h.id for h in store.search(q[0], k=8, label="rare")[0]] == [f"id{i}" for i in best]


def _meta(i: int) -> dict:
    return {"n": i % 7, "src": "phone" if i % 2 else "camera", "flag": i % 5 == 0, "rare": i % 250 == 3}


@pytest.mark.parametrize("kind", PRESET_NAMES)
def test_metadata_filter_returns_the_exact_nearest_matching_items_in_every_index_kind(open_store, kind):
    rng = np.random.default_rng(5)
    store = open_store(index=kind, train_threshold=500)
    vecs = unit(rng, 2000)
    store.upsert([Item(f"id{i}", vecs[i], f"c{i % 4}", _meta(i)) for i in range(2000)])
    q = unit(rng, 3)
    for where, label in [({"n": 3}, None), ({"src": "phone", "n": 5.0}, "c1"), ({"flag": True}, None),
                         ({"rare": True}, None)]:  # rare: 8 of 2,000, so the approximate kinds fall back
        match = np.array([i for i in range(2000) if all(_meta(i)[k] == v for k, v in where.items())
                          and (label is None or f"c{i % 4}" == label)])
        for qi, hits in enumerate(store.search(q, k=10, label=label, where=where)):
            best = match[np.argsort(-(vecs[match] @ q[qi]))[:10]]
            assert [h.id for h in hits] == [f"id{i}" for i in best], (kind, where)
            assert all(all(h.metadata[k] == v for k, v in where.items()) for h in hits)


def test_a_broad_filter_on_a_batch_is_exact_also_when_the_allowed_items_are_far_from_the_queries(open_store):
    # A batch of 16 on an exact gallery with a filter keeping 1/4 of it takes the BLAS path for more
    # candidates (Store._search_broad); where those candidates hold too few allowed items (here: the
    # allowed quarter lies opposite the first 8 queries), those queries take the selector path.
    rng = np.random.default_rng(11)
    store = open_store()
    vecs = unit(rng, 4000)
    vecs[:, 0] = np.abs(vecs[:, 0]) * np.where(np.arange(4000) % 4 == 0, -1, 1)  # allowed: x0 <= 0
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.upsert([Item(f"b{i}", vecs[i], None, {"q": i % 4}) for i in range(4000)])
    q = unit(rng, 16)
    q[:8, 0] = 3.0  # near the not-allowed side
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    allowed = np.arange(0, 4000, 4)
    for where, label in (({"q": 0}, None), (None, None)):
        keep = allowed if where else np.arange(4000)
        for row, hits in enumerate(store.search(q, k=10, where=where, label=label)):
            best = keep[np.argsort(-(vecs[keep] @ q[row]), kind="stable")[:10]]
            assert [h.id for h in hits] == [f"b{i}" for i in best], (where, row)


def test_metadata_filter_compares_json_types_and_needs_the_key(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(6), 6)
    metas = [{"v": 1}, {"v": 1.0}, {"v": "1"}, {"v": True}, {"v": None}, {}]
    store.upsert([Item(f"m{i}", vecs[i], None, m) for i, m in enumerate(metas)])

    def ids(where):
        return sorted(h.id for h in store.search(vecs[0], k=10, where=where)[0])

    assert ids({"v": 1}) == ["m0", "m1"]  # numbers by value, never "1" or true
    assert ids({"v": "1"}) == ["m2"] and ids({"v": True}) == ["m3"]
    assert ids({"v": None}) == ["m4"]  # null matches a null value, not a missing key
    assert ids({"v": 2}) == []


def test_metadata_comes_back_exactly_as_stored_in_hits_gets_listings_and_filters(open_store, tmp_path):
    # the values a fast JSON parser could change: integers beyond 64 bits (orjson makes them floats), 19-digit
    # strings, floats at the edge of their precision, nesting. (A lone surrogate is refused: no JSON answer in
    # UTF-8 could carry it, below.)
    metas = [{"big": 2 ** 64 + 1, "neg": -(2 ** 70)}, {"s": "\u00e9\U0001f600"}, {"digits": "1234567890123456789"},
             {"f": 0.1 + 0.2, "tiny": 5e-324, "e": 1.7976931348623157e308, "z": -0.0},
             {"nested": {"a": [1, 2.5, None, True, "x"]}, "int64": 2 ** 63 - 1}, {"unicode": "caf\u00e9 \U0001f600"}]
    vecs = unit(np.random.default_rng(11), len(metas))
    store = open_store(tmp_path / "exact")
    store.upsert([Item(f"x{i}", vecs[i], None, m) for i, m in enumerate(metas)])

    def same(got, want):   # type and value, -0.0 apart from 0.0
        return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True) and \
            [type(v) for v in got.values()] == [type(v) for v in want.values()]

    for i, m in enumerate(metas):
        assert same(store.get(f"x{i}").metadata, m)
        assert same(store.search(vecs[i], k=1)[0][0].metadata, m)
    assert all(same(it.metadata, m) for it, m in zip(store.list(0, 10), metas))
    assert [h.id for h in store.search(vecs[0], k=6, where={"big": 2 ** 64 + 1})[0]] == ["x0"]
    assert [h.id for h in store.search(vecs[0], k=6, where={"big": float(2 ** 64)})[0]] == []
    with pytest.raises(InvalidItemError, match="lone surrogate"):
        store.upsert([Item("half", vecs[1], None, {"s": "\ud800"})])
    assert store.count() == len(metas)


_OPS_METAS = [{"year": 2019, "day": "2019-12-31", "tags": ["x"]}, {"year": 2020, "day": "2020-01-01"},
              {"year": 2020.5, "day": "2020-06-30"}, {"year": 2021, "day": "2021-01-01", "src": "phone"},
              {"year": "2020", "src": "camera"}, {"year": True, "src": None}, {"src": "phone"}, {}]


@pytest.mark.parametrize("where, want", [
    ({"year": {"$gte": 2020}}, ["o1", "o2", "o3"]),                      # numbers only: not "2020" or true
    ({"year": {"$gt": 2019, "$lt": 2021}}, ["o1", "o2"]),
    ({"year": {"$lte": 2020}}, ["o0", "o1"]),
    ({"day": {"$gte": "2020-01-01", "$lt": "2021-01-01"}}, ["o1", "o2"]),  # ISO dates compare as strings
    ({"year": {"$in": [2019, "2020", True]}}, ["o0", "o4", "o5"]),
    ({"year": {"$nin": [2019, 2020]}}, ["o2", "o3", "o4", "o5", "o6", "o7"]),  # missing keys too
    ({"src": {"$ne": "phone"}}, ["o0", "o1", "o2", "o4", "o5", "o7"]),
    ({"src": {"$exists": True}}, ["o3", "o4", "o5", "o6"]), ({"tags": {"$exists": True}}, ["o0"]),
    ({"src": {"$exists": False}, "year": {"$eq": 2020}}, ["o1"]),
    ({"src": "phone", "year": {"$exists": False}}, ["o6"]),
    ({"src": {"$in": ["phone", None], "$ne": None}}, ["o3", "o6"]),
    ({"tags": {"$ne": "x"}}, [f"o{i}" for i in range(1, 8)]),           # o0's list holds "x" (docs: Lists)
    ({"nobody": {"$ne": 1}}, [f"o{i}" for i in range(8)]), ({"nobody": {"$gte": 1}}, []),
    ({"$or": [{"year": 2019}, {"src": "camera"}]}, ["o0", "o4"]),
    ({"$or": [{"year": {"$gte": 2021}}, {"src": {"$exists": False}}], "day": {"$exists": True}}, ["o0", "o1", "o2", "o3"]),
    ({"$or": [{"src": {"$ne": "phone"}}, {"year": 2021}]}, ["o0", "o1", "o2", "o3", "o4", "o5", "o7"]),
    ({"$and": [{"$or": [{"year": 2020}, {"year": 2021}]}, {"$or": [{"src": "phone"}, {"day": {"$lt": "2021"}}]}]},
     ["o1", "o3"])])
def test_filter_operators_select_what_they_say_in_search_count_and_list(open_store, where, want):
    store = open_store()
    vecs = unit(np.random.default_rng(12), len(_OPS_METAS))
    store.upsert([Item(f"o{i}", vecs[i], None, m) for i, m in enumerate(_OPS_METAS)])
    assert [f"o{i}" for i, m in enumerate(_OPS_METAS) if _reference(m, where)] == want  # the test's own reading
    assert sorted(h.id for h in store.search(vecs[0], k=10, where=where)[0]) == want
    assert store.count(where=where) == len(want) and [it.id for it in store.list(where=where)] == want


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_range_and_set_filters_return_the_nearest_matching_items(open_store, kind):
    rng = np.random.default_rng(13)
    store = open_store(index=kind, train_threshold=500)
    vecs = unit(rng, 3000)
    metas = [{"t": i % 100, "day": f"2024-{i % 12 + 1:02d}-01"} | ({"odd": True} if i % 2 else {}) for i in range(3000)]
    store.upsert([Item(f"r{i}", vecs[i], None, m) for i, m in enumerate(metas)])
    q = unit(rng, 12)  # a batch: the broad (BLAS) path for the wide filters on the exact gallery
    for where in ({"t": {"$gte": 10, "$lt": 60}}, {"t": {"$gt": 97}}, {"day": {"$lte": "2024-03-01"}},
                  {"t": {"$in": [1, 2, 3]}, "odd": {"$exists": False}}, {"t": {"$nin": [0, 1]}, "odd": {"$ne": True}},
                  {"$or": [{"t": {"$lt": 5}}, {"odd": True}]}):
        match = np.array([i for i, m in enumerate(metas) if _reference(m, where)])
        for row, hits in enumerate(store.search(q, k=10, where=where)):
            best = match[np.argsort(-(vecs[match] @ q[row]), kind="stable")[:10]]
            if kind == "flat":  # exact: the very same list
                assert [h.id for h in hits] == [f"r{i}" for i in best], (where, row)
            else:  # approximate: ten hits, all matching
                assert len(hits) == 10 and {h.id for h in hits} <= {f"r{i}" for i in match}, (where, row)


def test_a_filter_on_a_key_with_a_value_per_item_follows_every_write(open_store):
    # such keys (timestamps, file names) keep one id, not a set, per value: writes move between the two
    store = open_store()
    vecs = unit(np.random.default_rng(15), 10)
    metas = {f"t{i}": {"ts": 100 + i} for i in range(8)}
    store.upsert([Item(i, vecs[int(i[1:])], None, m) for i, m in metas.items()])

    def check():
        for where in ({"ts": 103}, {"ts": {"$gte": 102, "$lt": 106}}, {"ts": {"$in": [100, 107, 300]}},
                      {"ts": {"$ne": 104}}, {"ts": {"$exists": True}}):
            want = sorted(i for i, m in metas.items() if _reference(m, where))
            assert sorted(h.id for h in store.search(vecs[9], k=10, where=where)[0]) == want, where
            assert store.count(where=where) == len(want), where

    check()
    for change in ({"t5": {"ts": 103}}, {"t6": {"ts": 103}}, {"t3": {"ts": 999}}, {"t5": {}}, {"t9": {"ts": 103}}):
        metas.update(change)
        store.upsert([Item(i, vecs[int(i[1:])], None, m) for i, m in change.items()])
        check()
    for gone in (["t6"], ["t9", "t0"]):
        store.delete(gone)
        for i in gone:
            del metas[i]
        check()


def test_a_search_that_cannot_reconcile_memory_with_the_database_fails_instead_of_hanging(open_store, monkeypatch):
    monkeypatch.setattr(Store, "SEARCH_RETRY_SECONDS", 0.3)
    store = open_store()
    vecs = unit(np.random.default_rng(16), 3)
    store.upsert([Item(f"h{i}", vecs[i], "a", {}) for i in range(3)])
    store._by_label["a"].add(12345)  # an id no item has: what a bug in the in-memory state would leave
    with pytest.raises(StoreError, match="disagreeing for 0.3 s"):
        store.search(vecs[0], k=5, label="a")


def test_index_metadata_builds_key_indexes_up_front_and_keeps_them_current(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(17), 12)
    store.upsert([Item(f"k{i}", vecs[i], None, {"album": f"a{i % 3}", "n": i}) for i in range(10)])
    assert store.index_metadata(["album", "n", "camera", "album"]) == {"album": 3, "n": 10, "camera": 0}
    # a key no item had is kept current too, and every write reaches the indexes built
    store.upsert([Item("k10", vecs[10], None, {"camera": "x", "album": "a9"}), Item("k0", vecs[0], None, {"n": 0})])
    store.delete(["k1"])
    assert sorted(h.id for h in store.search(vecs[0], k=20, where={"camera": "x"})[0]) == ["k10"]
    assert sorted(h.id for h in store.search(vecs[0], k=20, where={"album": {"$in": ["a0", "a9"]}})[0]) == \
        ["k10", "k3", "k6", "k9"]
    assert store.index_metadata(["camera", "album", "n"]) == {"camera": 1, "album": 4, "n": 9}
    with pytest.raises(InvalidItemError, match="non-empty strings"):
        store.index_metadata(["album", ""])


def test_an_update_with_a_patch_that_is_no_object_or_a_bad_id_is_refused_before_anything_is_read(open_store):
    store = open_store()
    store.upsert([Item("u0", unit(np.random.default_rng(3), 1)[0], "cat", {"a": 1})])
    with pytest.raises(InvalidItemError, match=r"item 'u0': the metadata patch must be a JSON object \(dict\), got list"):
        store.update("u0", metadata_patch=[1])
    with pytest.raises(InvalidItemError, match="an id must be a non-empty string"):
        store.update("", metadata_patch={"a": 2})
    assert store.get("u0").metadata == {"a": 1}


def test_update_changes_label_and_metadata_in_place_durably_and_filters_follow(open_store, tmp_path):
    store = open_store()
    vecs = unit(np.random.default_rng(18), 3)
    store.upsert([Item("u0", vecs[0], "cat", {"album": "a", "place": {"city": "oslo", "zip": 1}}, thumbnail=b"\xff\xd8t"),
                  Item("u1", vecs[1], "cat", {"album": "a"}), Item("u2", vecs[2], None, {})])
    assert store.count(where={"album": "a"}) == 2  # the album index exists before the update
    item = store.update("u0", label="dog", metadata_patch={"album": "b", "place": {"zip": None, "country": "no"},
                                                           "stars": 4})
    assert item.label == "dog" and item.metadata == {"album": "b", "place": {"city": "oslo", "country": "no"}, "stars": 4}
    np.testing.assert_allclose(item.vector, vecs[0], rtol=1e-6)
    assert store.get("u0").metadata == item.metadata and store.thumbnail("u0") == b"\xff\xd8t"
    assert [it.id for it in store.list()] == ["u0", "u1", "u2"]  # its place in the listing is kept
    assert store.labels() == {"cat": 1, "dog": 1, None: 1}
    assert [h.id for h in store.search(vecs[0], k=3, where={"album": "a"})[0]] == ["u1"]
    assert [h.id for h in store.search(vecs[0], k=3, label="dog", where={"stars": {"$gte": 4}})[0]] == ["u0"]
    assert store.search(vecs[0], k=1)[0][0].id == "u0" and store.search(vecs[0], k=1)[0][0].score > 0.999
    assert store.update("u0").label == "dog"  # nothing given: nothing changes
    assert store.update("u0", label=None, metadata_patch={"album": None}).metadata == \
        {"place": {"city": "oslo", "country": "no"}, "stars": 4}
    with pytest.raises(KeyError):
        store.update("nobody", label="x")
    with pytest.raises(InvalidItemError, match="must be a JSON object"):
        store.update("u1", metadata_patch=["x"])
    with pytest.raises(InvalidItemError, match="label must be a string"):
        store.update("u1", label=3)
    with pytest.raises(InvalidItemError, match="more than"):
        store.update("u1", metadata_patch={"big": "x" * 70_000})
    assert store.get("u1").metadata == {"album": "a"} and store.get("u1").label == "cat"  # refused: unchanged
    store.close()
    reopened = open_store(tmp_path / "store")
    assert reopened.get("u0").label is None and reopened.get("u0").metadata["stars"] == 4
    assert [h.id for h in reopened.search(vecs[0], k=3, where={"stars": 4})[0]] == ["u0"]


def test_delete_where_removes_exactly_the_matching_items_durably(open_store, tmp_path):
    store = open_store()
    vecs = unit(np.random.default_rng(14), 40)
    store.upsert([Item(f"d{i}", vecs[i], f"c{i % 2}", {"n": i % 4}) for i in range(40)])
    assert store.search(vecs[0], k=5, where={"n": {"$in": [0, 1]}})[0]  # an index for "n", kept current
    assert sorted(store.delete_where(where={"n": {"$in": [0, 1]}}, label="c0")) == \
        sorted(f"d{i}" for i in range(40) if i % 4 == 0)  # label c0 = even, so n is 0 or 2
    assert store.delete_where(where={"n": {"$in": [0, 1]}}, label="c0") == []
    assert store.count(where={"n": 0}) == 0 and store.count() == 30
    with pytest.raises(InvalidItemError, match="needs a label or a where"):
        store.delete_where()
    with pytest.raises(InvalidItemError, match="unknown operator"):
        store.delete_where(where={"n": {"$regex": "x"}})
    store.close()
    reopened = open_store(tmp_path / "store")
    assert reopened.count() == 30 and reopened.get("d0") is None and reopened.get("d1") is not None


def test_list_filters_by_metadata_in_insertion_order_and_paginates(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(10), 30)
    store.upsert([Item(f"l{i}", vecs[i], f"c{i % 2}", {"n": i % 3}) for i in range(30)])
    store.upsert([Item("l0", vecs[0], "c0", {"n": 0})])  # replaced: moves to the end
    want = [f"l{i}" for i in range(1, 30) if i % 3 == 0] + ["l0"]
    assert [it.id for it in store.list(limit=100, where={"n": 0})] == want
    assert [it.id for it in store.list(offset=2, limit=3, where={"n": 0})] == want[2:5]
    assert [it.id for it in store.list(limit=100, label="c1", where={"n": 0})] == [i for i in want if int(i[1:]) % 2]
    assert store.list(offset=50, where={"n": 0}) == [] and store.list(where={"n": 7}) == []
    assert store.count(where={"n": 0}) == len(want) and store.count("c1", {"n": 0}) == 5
    assert all(it.metadata == {"n": 0} for it in store.list(where={"n": 0}))


def test_metadata_filter_sees_every_write(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(7), 4)
    store.upsert([Item(f"w{i}", vecs[i], None, {"album": "a"}) for i in range(3)])
    assert len(store.search(vecs[0], k=10, where={"album": "a"})[0]) == 3  # cached from here on
    store.upsert([Item("w3", vecs[3], None, {"album": "a"}), Item("w0", vecs[0], None, {"album": "b"})])
    assert {h.id for h in store.search(vecs[0], k=10, where={"album": "a"})[0]} == {"w1", "w2", "w3"}
    store.delete(["w1"])
    assert {h.id for h in store.search(vecs[0], k=10, where={"album": "a"})[0]} == {"w2", "w3"}
    # a key that no item has: nothing, and found once a write brings it (and gone with the item)
    assert store.search(vecs[0], k=10, where={"camera": "x"}) == [[]]
    store.upsert([Item("w9", vecs[1], None, {"camera": "x", "album": "c"})])
    assert [h.id for h in store.search(vecs[0], k=10, where={"camera": "x"})[0]] == ["w9"]
    store.delete(["w9"])
    assert store.search(vecs[0], k=10, where={"camera": "x"}) == [[]] and store.count(where={"album": "c"}) == 0
    # search_by_id: the item itself is left out whether or not it matches
    assert {h.id for h in store.search_by_id("w2", k=10, where={"album": "a"})} == {"w3"}
    assert [h.id for h in store.search_by_id("w0", k=10, where={"album": "b"})] == []


@pytest.mark.parametrize("where, match", [
    ({}, "non-empty object"), (["album"], "non-empty object"), ({"a": {"b": 1}}, "unknown operator 'b'"),
    ({"a": [1]}, "'a' must be a string"), ({"a": float("nan")}, "'a' must be a string"),
    ({"a": {}}, "'a' has an empty object"), ({"a": {"$in": 1}}, r"'a'.\$in must be a non-empty list"),
    ({"a": {"$nin": []}}, "non-empty list"), ({"a": {"$in": [[1]]}}, r"'a'.\$in must be a string"),
    ({"a": {"$gt": True}}, "must be a number or a string"), ({"a": {"$lt": None}}, "must be a number or a string"),
    ({"a": {"$gt": 1, "$lte": "z"}}, "mixes a number and a string"), ({"a": {"$gt": 1, "$gte": 2}}, "two lower bounds"),
    ({"a": {"$exists": 1}}, "true or false"), ({"a": {"$ne": {"x": 1}}}, r"'a'.\$ne must be a string"),
    ({"$or": []}, r"\$or must be a non-empty list"), ({"$or": [{"a": 1}, None]}, r"\$or\[1\] must be a filter object"),
    ({"$and": [{"a": {"$near": 1}}]}, r"\$and\[0\]: 'a' has an unknown operator"), ({"$nor": [{"a": 1}]}, "not a logical operator")])
def test_invalid_metadata_filters_are_refused_naming_the_value(open_store, where, match):
    store = open_store()
    store.upsert([Item("x", unit(np.random.default_rng(8), 1)[0], None, {"a": 1})])
    with pytest.raises(InvalidItemError, match=match):
        store.search(unit(np.random.default_rng(9), 1), k=1, where=where)
    with pytest.raises(InvalidItemError, match=match):
        store.search_by_id("x", k=1, where=where)


def test_max_distance_keeps_only_hits_within_it(open_store):
    rng = np.random.default_rng(5)
    store = open_store()
    vecs = unit(rng, 500)
    _fill(store, vecs)
    q = vecs[0]
    everything = store.search(q, k=500)[0]
    limit = everything[20].distance
    hits = store.search(q, k=500, max_distance=limit)[0]
    assert 20 < len(hits) < 500 and all(h.distance <= limit for h in hits)
    assert [h.id for h in hits] == [h.id for h in everything[:len(hits)]]
    for h in hits:  # distance is the Euclidean distance between the unit vectors
        i = int(h.id[2:])
        assert h.distance == pytest.approx(float(np.linalg.norm(q - vecs[i])), abs=1e-3)
        assert h.score == pytest.approx(float(q @ vecs[i]), abs=1e-5)
    assert store.search(q, k=5, max_distance=0.0)[0][0].id == "id0"


def test_search_many_queries_returns_one_list_each_best_first(open_store):
    rng = np.random.default_rng(6)
    store = open_store()
    vecs = unit(rng, 300)
    _fill(store, vecs)
    results = store.search(vecs[:7], k=4)
    assert [r[0].id for r in results] == [f"id{i}" for i in range(7)]
    assert all(len(r) == 4 and r[0].score >= r[1].score >= r[3].score for r in results)


def test_exact_search_switches_to_blas_by_gallery_size_and_stays_exact(open_store, monkeypatch):
    import faiss

    from index import _faiss

    rng = np.random.default_rng(16)
    dim = 256
    # Over the size up to which the switch is measured (lowered here to 1 MB): BLAS from 6 queries.
    monkeypatch.setattr(_faiss, "_MEASURE_MAX_BYTES", 1 << 20)
    store = open_store(dim=dim)
    vecs = unit(rng, 2_000, dim)   # 2 MB of vectors
    _fill(store, vecs)
    queries = unit(rng, 8, dim)
    results = store.search(queries, k=10)
    assert faiss.cvar.distance_compute_blas_threshold == _faiss.BLAS_MIN_QUERIES * dim
    expected = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    assert [[h.id for h in r] for r in results] == [[f"id{j}" for j in row] for row in expected]
    monkeypatch.undo()
    # Under it, the switch is measured on the gallery's own vectors, once per size class...
    key = (dim, len(vecs).bit_length())
    _faiss._measured.pop(key, None)
    for batch_size in (2, 16):   # on either side of any switch point it can choose
        batch = unit(rng, batch_size, dim)
        results = store.search(batch, k=10)
        expected = np.argsort(-(batch @ vecs.T), axis=1)[:, :10]
        assert [[h.id for h in r] for r in results] == [[f"id{j}" for j in row] for row in expected]
    measured = _faiss._measured[key]
    assert measured in (*_faiss._MEASURED_QUERIES, 2 * _faiss._MEASURED_QUERIES[-1])
    assert faiss.cvar.distance_compute_blas_threshold == measured * dim
    # ...and the measurement is what later searches of that size use.
    _faiss._measured[key] = 5
    store.search(queries, k=3)
    assert faiss.cvar.distance_compute_blas_threshold == 5 * dim
    _faiss._measured.pop(key)


def test_search_by_id_excludes_the_item_and_raises_keyerror_when_absent(open_store):
    rng = np.random.default_rng(7)
    store = open_store()
    vecs = unit(rng, 100)
    _fill(store, vecs)
    hits = store.search_by_id("id3", k=5)
    assert len(hits) == 5 and all(h.id != "id3" for h in hits)
    assert [h.id for h in hits] == [h.id for h in store.search(vecs[3], k=6)[0][1:]]
    with pytest.raises(KeyError):
        store.search_by_id("missing")
    for bad in ({"k": 0}, {"k": True}, {"max_distance": -1.0}, {"max_distance": float("nan")}):
        with pytest.raises(InvalidItemError, match="k must be|max_distance must be"):
            store.search_by_id("id3", **bad)


def test_list_paginates_in_insertion_order_and_filters_by_label(open_store):
    rng = np.random.default_rng(8)
    store = open_store()
    vecs = unit(rng, 25)
    _fill(store, vecs, [("even" if i % 2 == 0 else "odd") for i in range(25)])
    pages = [store.list(offset=o, limit=10) for o in (0, 10, 20, 30)]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    assert [it.id for p in pages for it in p] == [f"id{i}" for i in range(25)]
    odd = store.list(offset=2, limit=3, label="odd")
    assert [it.id for it in odd] == ["id5", "id7", "id9"]
    store.upsert([Item("id0", vecs[0], label="even")])  # an upsert moves the item to the end
    assert store.list(offset=24, limit=5)[0].id == "id0"
    assert store.labels() == {"even": 13, "odd": 12}
    with pytest.raises(InvalidItemError, match="offset"):
        store.list(offset=-1)
    with pytest.raises(InvalidItemError, match="offset must be a whole number from 0 to"):
        store.list(offset=2**63)   # past SQLite's 64-bit integers: refused, not an OverflowError


@pytest.mark.parametrize("bad, match", [
    (np.zeros(DIM + 1, np.float32), r"shape must be \(32,\).*got \(33,\)"),
    (np.ones((2, DIM), np.float32), r"got \(2, 32\)"),
    (np.full(DIM, np.nan, np.float32), "NaN"),
    (np.ones(DIM, np.int64), "dtype must be floating point, got int64"),
    (np.zeros(DIM, np.float32), "zero length"),
])
def test_invalid_vectors_are_refused_naming_the_wrong_value(open_store, bad, match):
    store = open_store()
    with pytest.raises(InvalidItemError, match=match):
        store.upsert([Item("ok", np.ones(DIM, np.float32)), Item("bad", bad)])
    assert store.count() == 0 and store.get("ok") is None  # the whole batch was refused


def test_invalid_ids_metadata_and_queries_are_refused(open_store):
    store = open_store()
    v = np.ones(DIM, np.float32)
    with pytest.raises(InvalidItemError, match="id must be"):
        store.upsert([Item("", v)])
    with pytest.raises(InvalidItemError, match="metadata must be a JSON object"):
        store.upsert([Item("a", v, metadata=[1, 2])])
    with pytest.raises(InvalidItemError, match="not JSON-serialisable"):
        store.upsert([Item("a", v, metadata={"x": object()})])
    with pytest.raises(InvalidItemError, match="label must be a string"):
        store.upsert([Item("a", v, label=3)])
    store.upsert([Item("a", v)])
    with pytest.raises(InvalidItemError, match="k must be a positive integer, got 0"):
        store.search(v, k=0)
    with pytest.raises(InvalidItemError, match=r"got \(3, 31\)"):
        store.search(np.ones((3, DIM - 1), np.float32))
    with pytest.raises(InvalidItemError, match="max_distance"):
        store.search(v, max_distance=-1)
    assert isinstance(InvalidItemError("x"), StoreError)


def test_reopening_with_another_model_or_dim_raises_model_mismatch_naming_both(open_store, tmp_path):
    store = open_store(model_id="model-a@111111111111")
    store.upsert([Item("a", np.ones(DIM, np.float32))])
    store.close()
    with pytest.raises(ModelMismatchError,   # both models, and the way out
                       match=r"model-a@111111111111.*model-b@222222222222.*simsearch index reembed"):
        Store.open(StoreConfig(tmp_path / "store", dim=DIM, model_id="model-b@222222222222"))
    with pytest.raises(ModelMismatchError, match=rf"dim {DIM}.*dim 64"):
        Store.open(StoreConfig(tmp_path / "store", dim=64, model_id="model-a@111111111111"))
    # and None means "whatever it records"
    again = open_store(model_id=None, dim=None)
    assert (again.model_id, again.dim, again.count()) == ("model-a@111111111111", DIM, 1)


def test_a_store_dropped_without_close_lets_go_of_its_writer_lock_when_collected(tmp_path):
    store = Store.open(StoreConfig(tmp_path / "store", dim=DIM, model_id="m@000000000000"))
    store.upsert([Item("a", unit(np.random.default_rng(0), 1)[0])])
    del store   # never closed
    gc.collect()
    again = Store.open(StoreConfig(tmp_path / "store", dim=DIM, model_id="m@000000000000"))
    try:
        assert again.get("a") is not None
    finally:
        again.close()


def test_a_second_writer_is_refused_and_read_only_refuses_writes(open_store, tmp_path):
    store = open_store()
    store.upsert([Item("a", np.ones(DIM, np.float32))])
    with pytest.raises(StoreLockedError, match="open for writing in this process"):   # the holder is this test
        Store.open(StoreConfig(tmp_path / "store", dim=DIM, model_id=store.model_id))
    ro = Store.open(StoreConfig(tmp_path / "store", read_only=True))
    try:
        assert ro.count() == 1 and ro.get("a") is not None
        with pytest.raises(ReadOnlyError):
            ro.upsert([Item("b", np.ones(DIM, np.float32))])
    finally:
        ro.close()


def test_unknown_index_kind_is_refused_naming_it_and_leaves_no_store_behind(open_store, tmp_path):
    with pytest.raises(InvalidItemError, match="'IVFbogus'"):
        open_store(index="IVFbogus")
    assert not (tmp_path / "store").exists()   # a later open must not find an empty store of no model


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_trained_index_is_exact_below_the_threshold_and_trained_above(open_store, kind):
    rng = np.random.default_rng(9)
    store = open_store(index=kind, train_threshold=400)
    _fill(store, unit(rng, 399))
    assert store.info()["exact"] and store.info()["index_kind"].startswith("IndexFlat")
    _fill(store, unit(rng, 1), prefix="more")
    info = store.info()
    assert not info["exact"] and info["trained_on"] == 400 and "nlist" in info["index_kind"]


def test_custom_factory_string_is_used(open_store):
    store = open_store(index="IVF8,SQ8", train_threshold=300)
    vecs = unit(np.random.default_rng(10), 320)
    _fill(store, vecs)
    assert "IndexIVFScalarQuantizer" in store.info()["index_kind"]
    assert store.search(vecs[3], k=1)[0][0].id == "id3"


def test_hnsw_hides_deleted_vectors_and_compacts_them_on_rebuild(open_store):
    rng = np.random.default_rng(11)
    store = open_store(index="hnsw")
    vecs = unit(rng, 300)
    _fill(store, vecs)
    store.delete([f"id{i}" for i in range(0, 300, 2)])
    assert store.info()["removed_pending"] == 150
    for i in range(0, 300, 2):  # a deleted item never comes back, even as its own nearest
        assert all(int(h.id[2:]) % 2 == 1 for h in store.search(vecs[i], k=3)[0])
    store.rebuild()
    assert store.info()["removed_pending"] == 0 and store.count() == 150
    assert store.search(vecs[1], k=1)[0][0].id == "id1"


def test_a_reader_lists_and_reads_items_while_the_store_is_open_for_writing(open_store, tmp_path):
    from index import StoreReader

    store = open_store()
    rng = np.random.default_rng(3)
    v = unit(rng, 3)
    store.upsert([Item("a", v[0], label="x", metadata={"n": 1}, thumbnail=b"jpeg-a"), Item("b", v[1], thumbnail=b"jpeg-b")])
    store.upsert([Item("a", v[2], label="y", metadata={"n": 2})])  # replaced: a new seq, no thumbnail
    store.update("b", metadata_patch={"k": "v"})                   # edited in place: the seq stays
    with StoreReader(tmp_path / "store") as reader:  # no lock taken: the store above still holds it
        assert (reader.model_id, reader.dim) == (store.model_id, DIM)
        last_seq, rows = reader.rows()
        assert last_seq == store.info()["last_seq"] == 3
        assert list(rows) == ["b", "a"] and rows["b"].seq == 2 and rows["a"].seq == 3
        assert rows["a"].label == "y" and json.loads(rows["b"].metadata_json) == {"k": "v"}
        a, missing, b = reader.items(["a", "nope", "b"])
        assert missing is None and a.thumbnail is None and np.allclose(a.vector, v[2])
        assert b.metadata == {"k": "v"} and b.thumbnail == b"jpeg-b"
        assert reader.items(["b"], thumbnails=False)[0].thumbnail is None
    with pytest.raises(StoreError, match="no store at"):
        StoreReader(tmp_path / "elsewhere")


def test_a_check_beside_a_writer_that_snapshots_finds_nothing_wrong(tmp_path):
    """StoreReader.check while another thread writes and snapshots every few writes: never a false
    alarm (a snapshot newer than the items the check read is not damage)."""
    import threading

    from index import StoreReader

    store = Store.open(StoreConfig(tmp_path / "store", dim=DIM, model_id="m@0", snapshot_every=5))
    rng = np.random.default_rng(4)
    store.upsert([Item(f"w{i}", v) for i, v in enumerate(unit(rng, 20))])
    done = threading.Event()

    def write() -> None:
        for n in range(300):
            store.upsert([Item(f"x{n}", unit(rng, 1)[0])])
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    checks = []
    with StoreReader(tmp_path / "store") as reader:
        while not done.is_set() or not checks:
            checks.append(reader.check())
    writer.join()
    store.close()
    assert len(checks) > 1 and all(c.ok for c in checks), [c.problems for c in checks if not c.ok][:1]
    assert checks[-1].items >= 20


@pytest.mark.parametrize("kind", PRESET_NAMES)
def test_copies_of_one_photo_scoring_the_same_page_in_one_order_each_copy_once(open_store, kind):
    """Equal scores are settled by the order the items were added, whatever k: pages of a search
    (offset, exclude, filters) hold every copy once, where FAISS alone orders ties by k."""
    from index import search_hits

    rng = np.random.default_rng(11)
    store = open_store(index=kind)
    others = unit(rng, 300)
    copy = unit(rng, 1)[0]
    _fill(store, others, ["other"] * 300)
    store.upsert([Item(f"copy{i:02d}", copy, label="copy", metadata={"n": i}) for i in range(12)])
    query = (copy + 0.3 * unit(rng, 1)[0])[None].astype(np.float32)
    every = [h.id for h in store.search(query, k=12)[0]]
    assert every == [f"copy{i:02d}" for i in range(12)]
    for filters in ({}, {"label": "copy"}, {"where": {"n": {"$gte": 0}}}):
        pages = [h.id for o in range(0, 12, 3) for h in search_hits(store, query, 3, offset=o, **filters)[0]]
        assert pages == every, filters
        for k in (1, 5, 7, 11):
            assert [h.id for h in store.search(query, k=k, **filters)[0]] == every[:k], (filters, k)
    left_out = search_hits(store, query, 4, exclude=["copy00", "copy05"], offset=4)[0]
    assert [h.id for h in left_out] == [i for i in every if i not in ("copy00", "copy05")][4:8]
    assert [h.id for h in store.search_by_id("copy03", k=4)] == ["copy00", "copy01", "copy02", "copy04"]


def export_by_position(store, page: int, between_pages=lambda n: None, **filters) -> list[str]:
    """The ids an exporter reads, a page at a time by listing position (`after`), calling
    between_pages(n) after the n-th page (writes by someone else)."""
    seen: list[str] = []
    after = None
    for n in range(100):
        got = store.list_positions(limit=page, after=after, **filters)
        assert [it.id for _, it in got] == [it.id for it in store.list(limit=page, after=after, **filters)]
        if not got:
            return seen
        seen += [it.id for _, it in got]
        after = got[-1][0]
        between_pages(n)
    raise AssertionError("the listing never ended")


def check_paging_after_a_position(store) -> None:
    """Keyset paging (list(after=)), for every store kind: a delete of an item already read moves no other
    item across the cursor; a replaced item is read again at the end; label and where narrow it."""
    vecs = unit(np.random.default_rng(5), 12)
    items = [Item(f"p{j:02d}", vecs[j], "ab"[j % 2], {"n": j}) for j in range(12)]
    store.upsert(items)

    def writes(n):
        if n == 0:   # after the first page: delete an item it held, replace another
            store.delete(["p00"])
            store.upsert([items[2]])

    seen = export_by_position(store, 4, writes)
    assert seen == [f"p{j:02d}" for j in range(12)] + ["p02"]   # nothing unchanged skipped; p02 again, last
    assert export_by_position(store, 2, label="a") == ["p04", "p06", "p08", "p10", "p02"]
    assert export_by_position(store, 3, label="b", where={"n": {"$gte": 5}}) == ["p05", "p07", "p09", "p11"]
    assert export_by_position(store, 2, where={"n": {"$lt": 4}}) == ["p01", "p03", "p02"]
    first = store.list_positions(limit=2)
    assert [it.id for it in store.list(after=first[0][0], offset=1, limit=2)] == ["p04", "p05"]   # offset counts on
    assert store.list(after=2**63 - 1) == []
    for bad in (-1, "3", True, 2**63, 1.5):
        with pytest.raises(InvalidItemError, match=r"after must be a listing position.*got"):
            store.list(after=bad)


def test_paging_after_a_listing_position_skips_no_unchanged_item_when_earlier_ones_are_deleted(open_store):
    check_paging_after_a_position(open_store())


def test_a_store_a_newer_simsearch_wrote_is_refused_for_reading_and_writing_and_left_as_it_was(tmp_path):
    import sqlite3

    from index import StoreError, StoreReader

    path = tmp_path / "store"
    with Store.open(StoreConfig(path, dim=4, model_id="m@1")) as store:
        store.upsert([Item("a", np.array([1, 0, 0, 0], dtype=np.float32))])
    with sqlite3.connect(path / "store.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    conn.close()
    for open_it in (lambda: Store.open(StoreConfig(path, dim=4, model_id="m@1")),
                    lambda: Store.open(StoreConfig(path, read_only=True)), lambda: StoreReader(path)):
        with pytest.raises(StoreError, match=r"written by a newer simsearch \(store schema 2; this one reads "
                                             r"schema 1 and older\)"):
            open_it()
    with sqlite3.connect(path / "store.sqlite3") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)   # not marked down
    conn.close()


def test_a_folder_store_has_every_method_and_attribute_of_a_gallery_store(tmp_path):
    from index import GalleryStore

    with Store.open(StoreConfig(tmp_path / "s", dim=4, model_id="m@1")) as store:
        assert isinstance(store, GalleryStore)


def test_numpy_numbers_are_taken_for_k_and_max_distance_and_messages_name_what_the_caller_gave(tmp_path):
    """What a numpy- or pandas-driven notebook hands over: np.int64 k (FAISS refused it with a SWIG
    overload error), a (3,) query named as (3,), not (1, 3), and a facet field named `field`."""
    rng = np.random.default_rng(3)
    with Store.open(StoreConfig(tmp_path / "s", dim=DIM, model_id="m@1", index="hnsw")) as store:
        store.upsert([Item(f"i{n}", v) for n, v in enumerate(unit(rng, 20))])
        q = unit(rng, 1)[0]
        assert len(store.search(q, k=np.int64(3), max_distance=np.float32(2.0))[0]) == 3
        assert len(store.search_by_id("i1", k=np.int32(2))) == 2
        with pytest.raises(InvalidItemError, match=rf"must be \(n, {DIM}\) or \({DIM},\) .*, got \(3,\)"):
            store.search(q[:3])
        with pytest.raises(ValueError, match="^field='even': give `label`"):
            store.facets("even")
        with pytest.raises(InvalidItemError, match="k must be a positive integer, got 2.0"):
            store.search(q, k=2.0)


def test_opening_a_new_store_without_its_model_or_on_a_file_is_refused_and_leaves_nothing(tmp_path):
    from index import StoreError

    with pytest.raises(StoreError, match="needs model_id and dim"):
        Store.open(StoreConfig(tmp_path / "new"))
    assert not (tmp_path / "new").exists()   # no LOCK, no empty database a later open would call empty
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot make a store at .*afile: it, or a folder above it, is a file"):
        Store.open(StoreConfig(tmp_path / "afile", dim=DIM, model_id="m@1"))
    with pytest.raises(StoreError, match="is a file"):
        Store.open(StoreConfig(tmp_path / "afile" / "below", dim=DIM, model_id="m@1"))


def test_numpy_scalars_in_metadata_are_stored_as_the_json_numbers_they_hold_and_filter_alike(tmp_path):
    rng = np.random.default_rng(4)
    with Store.open(StoreConfig(tmp_path / "s", dim=DIM, model_id="m@1")) as store:
        vecs = unit(rng, 2)
        store.upsert([Item("a", vecs[0], metadata={"score": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True)}),
                      Item("b", vecs[1], metadata={"score": 0.25, "n": 4, "ok": False})])
        assert store.get("a").metadata == {"score": 0.5, "n": 3, "ok": True}
        assert type(store.get("a").metadata["n"]) is int
        assert [h.id for h in store.search(vecs[1], k=2, where={"n": {"$lt": 4}})[0]] == ["a"]
        with pytest.raises(InvalidItemError, match="not JSON-serialisable"):
            store.upsert([Item("c", vecs[0], metadata={"v": np.zeros(2)})])   # an array is no scalar
        with pytest.raises(InvalidItemError, match="not JSON-serialisable"):
            store.upsert([Item("c", vecs[0], metadata={"v": np.float64("nan")})])
