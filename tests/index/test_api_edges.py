"""Edges of the index package's Python API, each refused with an error that names the value, or accepted as
its like is elsewhere: a `where` operand that is not JSON (a set), numpy scalars in `where` (metadata takes
them), a dict or a lone Item given to upsert, a model mismatch when only one of model_id and dim was asked
for, and len() of a store."""
from __future__ import annotations

import numpy as np
import pytest

import index
from index import InvalidItemError, Item, ModelMismatchError, Store, StoreConfig, check_where

from .conftest import DIM, unit

MODEL = "test-model@000000000000"


@pytest.mark.parametrize("where, named", [
    ({"n": {"$in": {1, 2}}}, "{1, 2}"),
    ({"n": {"$nin": frozenset({1})}}, "frozenset({1})"),
    ({"n": {1, 2}}, "{1, 2}"),
    ({"n": {"$eq": {1}}}, "{1}"),
    ({"$or": [{"n": {"$in": {3}}}]}, "{3}"),
])
def test_a_where_operand_that_is_not_json_is_an_invalid_item_error_naming_it(where, named):
    with pytest.raises(InvalidItemError) as err:   # was a raw TypeError (set is not JSON serializable)
        check_where(where)
    assert named in str(err.value) and "'n'" in str(err.value), str(err.value)


def test_a_where_still_refuses_a_lone_surrogate():
    with pytest.raises(InvalidItemError, match="lone surrogate"):
        check_where({"n": "\ud800"})


def test_where_takes_numpy_scalars_as_metadata_does(open_store):
    store = open_store()
    vecs = unit(np.random.default_rng(0), 6)
    # metadata takes numpy's numbers: they are stored as the JSON numbers they hold
    store.upsert([Item(f"i{n}", vecs[n], metadata={"n": np.int64(n), "x": np.float32(n / 2),
                                                   "even": np.bool_(n % 2 == 0)}) for n in range(6)])
    assert store.get("i3").metadata == {"n": 3, "x": 1.5, "even": False}
    ids = lambda where: sorted(h.id for h in store.search(vecs[0], k=6, where=where)[0])  # noqa: E731
    assert ids({"n": np.int64(3)}) == ["i3"] == ids({"n": 3})
    assert ids({"x": np.float32(1.5)}) == ["i3"]
    assert ids({"even": np.bool_(True)}) == ["i0", "i2", "i4"] == ids({"even": True})
    assert ids({"n": {"$in": [np.int32(1), np.uint8(4)]}}) == ["i1", "i4"]
    assert ids({"n": {"$gte": np.int64(2), "$lt": np.float32(4)}}) == ["i2", "i3"]
    assert ids({"n": {"$exists": np.bool_(True)}}) == [f"i{n}" for n in range(6)]
    assert store.count(where={"n": {"$ne": np.int16(0)}}) == 5
    assert check_where({"n": np.int64(3)}) == check_where({"n": 3})   # one canonical filter (and cache key)
    for bad in (np.float32("nan"), np.array([1, 2]), np.datetime64("2024-01-01")):
        with pytest.raises(InvalidItemError):
            check_where({"n": bad})


def test_upsert_refuses_a_dict_or_a_lone_item_saying_to_pass_index_items(open_store):
    store = open_store()
    v = unit(np.random.default_rng(1), 1)[0]
    with pytest.raises(InvalidItemError, match=r"entry 0 is a dict, not an index\.Item: \{'id': 'a'"):
        store.upsert([{"id": "a", "vector": v}])   # was AttributeError: 'dict' object has no attribute 'id'
    with pytest.raises(InvalidItemError, match=r"entry 1 is a tuple, not an index\.Item"):
        store.upsert([Item("a", v), ("b", v)])
    with pytest.raises(InvalidItemError, match=r"upsert takes a list of index\.Item, got one Item"):
        store.upsert(Item("a", v))
    with pytest.raises(InvalidItemError, match=r"upsert takes a list of index\.Item, got one dict"):
        store.upsert({"id": "a", "vector": v})
    assert store.count() == 0   # nothing written
    assert store.upsert([Item("a", v)]) == 1


def test_a_model_mismatch_names_what_was_asked_for_not_none(tmp_path):
    path = tmp_path / "store"
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL)):
        pass
    with pytest.raises(ModelMismatchError) as err:
        Store.open(StoreConfig(path, dim=16))
    assert f"holds vectors of model {MODEL!r} (dim {DIM}), not of dim 16;" in str(err.value), str(err.value)
    assert "None" not in str(err.value)
    with pytest.raises(ModelMismatchError) as err:
        Store.open(StoreConfig(path, model_id="other@1"))
    assert "not of model 'other@1';" in str(err.value) and "None" not in str(err.value), str(err.value)
    with pytest.raises(ModelMismatchError, match=r"not of model 'other@1' \(dim 16\);"):
        Store.open(StoreConfig(path, model_id="other@1", dim=16))


def test_a_milvus_model_mismatch_names_what_was_asked_for_not_none(tmp_path):
    pytest.importorskip("pymilvus")
    uri = str(tmp_path / "milvus.db")
    index.MilvusStore.open(index.MilvusConfig(uri, dim=DIM, model_id=MODEL)).close()
    with pytest.raises(ModelMismatchError) as err:
        index.MilvusStore.open(index.MilvusConfig(uri, dim=16))
    assert f"(dim {DIM}), not dim 16;" in str(err.value) and "None" not in str(err.value), str(err.value)


def test_len_of_a_store_is_its_count_and_an_empty_store_is_still_true(open_store):
    store = open_store()
    assert len(store) == 0 and bool(store)   # an open store, empty
    vecs = unit(np.random.default_rng(2), 3)
    store.upsert([Item(f"i{n}", vecs[n]) for n in range(3)])
    store.delete(["i0"])
    assert len(store) == store.count() == 2
