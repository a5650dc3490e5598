"""Metadata integers at the edges of 64 bits (-2**63 .. 2**64 - 1, signed or unsigned: a 64-bit hash) are kept and
found by ranges and facets in the FAISS store and in Milvus the same (docs/index.md, "Galleries in Milvus": beyond
them only the FAISS store's ranges and facets find a number)."""
from __future__ import annotations

import numpy as np

from index import Item

from . import test_list_filters
from .conftest import unit

open_any = test_list_filters.open_any   # the fixture: a Store, or a MilvusStore on a Milvus Lite file

_EDGES = [-2**63, -1, 0, 2**63 - 1, 2**63, 2**64 - 1]


def test_integers_at_the_edges_of_64_bits_are_kept_and_found_by_ranges_and_facets_in_every_store(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(5), len(_EDGES))
    store.upsert([Item(f"i{j}", vecs[j], None, {"n": n}) for j, n in enumerate(_EDGES)])
    assert [store.get(f"i{j}").metadata["n"] for j in range(len(_EDGES))] == _EDGES
    for where, want in [({"n": {"$gt": 1.5}}, [3, 4, 5]), ({"n": {"$lte": 0}}, [0, 1, 2]),
                        ({"n": {"$gte": 2**63}}, [4, 5]), ({"n": {"$lt": -2**62}}, [0]), ({"n": 2**64 - 1}, [5])]:
        assert store.count(where=where) == len(want), where
        found = store.search(vecs[0], k=len(_EDGES), where=where)[0]
        assert sorted(h.id for h in found) == [f"i{j}" for j in want], where
    assert sorted(value for value, _ in store.facets("metadata.n").values) == sorted(_EDGES)
