"""len(store) and bool(store) mean the same on both stores (docs/index.md): len is count() (items in the gallery,
deleted ones gone), an empty store is still true (`if store:` asks whether there is one), and a closed store's
len() is StoreClosedError, as its count() is, while it stays true. Code written against one store runs on the
other (MilvusStore had no len(): TypeError)."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item, StoreClosedError

from .conftest import unit
from .test_list_filters import open_any  # noqa: F401  (the fixture: a Store, and a MilvusStore on Milvus Lite)


def test_len_is_the_count_of_items_and_an_empty_store_is_true_on_both_stores(open_any):  # noqa: F811
    store = open_any()
    assert len(store) == 0 and bool(store)   # an open store, empty
    vecs = unit(np.random.default_rng(3), 4)
    store.upsert([Item(f"i{n}", vecs[n], label="a" if n % 2 else "b") for n in range(4)])
    store.upsert([Item("i1", vecs[0], label="b")])   # a replacement: no new item
    store.delete(["i0"])
    assert len(store) == store.count() == 3
    assert bool(store) and (1 if store else 0) == 1


def test_a_closed_stores_len_is_store_closed_error_as_its_count_and_it_stays_true(open_any):  # noqa: F811
    store = open_any()
    store.upsert([Item("i0", unit(np.random.default_rng(4), 1)[0])])
    assert len(store) == 1
    store.close()
    with pytest.raises(StoreClosedError):
        store.count()
    with pytest.raises(StoreClosedError):
        len(store)
    assert bool(store)
