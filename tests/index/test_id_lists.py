"""A single id where a list of ids is asked for is refused, naming it, by every method and function taking
several ids (or metadata keys), on both stores: a string is iterable, so delete("ab") deleted the items "a"
and "b" and kept "ab", delete("id1") deleted nothing, and get_many/has_ids/exclude answered about its
characters, all silently."""
from __future__ import annotations

import numpy as np
import pytest

import index
from index import InvalidItemError, Item, StoreReader

from .conftest import DIM, unit

MODEL = "test-model@000000000000"


def _fill(store) -> np.ndarray:
    vecs = unit(np.random.default_rng(0), 4)
    store.upsert([Item(i, v, "x", {"n": n}) for n, (i, v) in enumerate(zip(["a", "b", "ab", "id1"], vecs))])
    return vecs


def _refused(call, name: str, value) -> None:
    with pytest.raises(InvalidItemError) as err:
        call()
    text = str(err.value)
    assert f"{name} takes a list of" in text and repr(value) in text and "put it in a list" in text, text


def _check_store(store, vecs: np.ndarray) -> None:
    for value in ("ab", b"ab"):
        _refused(lambda: store.delete(value), "delete", value)
        _refused(lambda: store.get_many(value), "get_many", value)
        _refused(lambda: store.has_ids(value), "has_ids", value)
        _refused(lambda: store.search_grouped(vecs[:1], 2, "label", exclude=value), "exclude", value)
        _refused(lambda: index.search_hits(store, vecs[:1], 2, exclude=value), "exclude", value)
        _refused(lambda: index.search_hits(store, vecs[:1], 2, exclude=value, group_by="label"), "exclude", value)
        _refused(lambda: index.refine_queries(store, [vecs[0]], value, []), "like", value)
        _refused(lambda: index.refine_queries(store, [vecs[0]], [], value), "unlike", value)
    _refused(lambda: store.delete("id1"), "delete", "id1")
    _refused(lambda: store.index_metadata("n"), "index_metadata", "n")
    assert store.count() == 4 and store.has_ids(["a", "b", "ab", "id1"]) == {"a", "b", "ab", "id1"}
    # lists, tuples, sets and generators of ids still work
    assert [it.id for it in store.get_many(("ab", "a"))] == ["ab", "a"]
    assert store.has_ids({"ab", "zz"}) == {"ab"}
    assert store.index_metadata(["n"]) == {"n": 4}
    assert all(h.id != "ab" for h in index.search_hits(store, vecs[2:3], 3, exclude=["ab"])[0])
    assert store.delete(i for i in ["ab"]) == ["ab"]
    assert store.has_ids(["a", "b", "ab", "id1"]) == {"a", "b", "id1"}


def test_store_refuses_one_string_where_a_list_of_ids_is_asked_for(open_store):
    store = open_store()
    _check_store(store, _fill(store))


def test_store_reader_items_refuses_one_string(open_store, tmp_path):
    store = open_store()
    _fill(store)
    store.close()
    reader = StoreReader(tmp_path / "store")
    try:
        _refused(lambda: reader.items("ab"), "items", "ab")
        assert [it.id for it in reader.items(["ab"])] == ["ab"]
    finally:
        reader.close()


def test_milvus_store_refuses_one_string_where_a_list_of_ids_is_asked_for(tmp_path):
    pytest.importorskip("pymilvus")
    store = index.MilvusStore.open(index.MilvusConfig(str(tmp_path / "milvus.db"), dim=DIM, model_id=MODEL))
    try:
        vecs = _fill(store)
        _refused(lambda: store.items("ab"), "items", "ab")
        _check_store(store, vecs)
    finally:
        store.close()
