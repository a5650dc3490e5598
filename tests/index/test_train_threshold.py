"""A store whose train_threshold is below what its index kind trains on (FAISS's k-means wants at least as many
points as centroids: OPQ and an 8-bit PQ 256) stays exact until the gallery holds that many, instead of raising
FAISS's RuntimeError from an upsert whose items were stored (the service would have answered 500 for a stored
write; the differential hunt's side finding)."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item
from index._faiss import min_training_points

DIM = 16


@pytest.mark.parametrize("spec, least", [("flat", 1), ("ivf", 8), ("ivfpq", 16), ("OPQ4,IVF{nlist},PQ4", 256),
                                         ("IVF1024,Flat", 1024), ("HNSW32,PQ4", 256)])
def test_the_fewest_training_points_of_a_kind_are_its_most_centroids(spec, least):
    assert min_training_points(spec, DIM) == least


def test_writes_below_the_kinds_training_minimum_succeed_and_it_trains_once_there_are_enough(open_store):
    store = open_store(dim=DIM, index="OPQ4,IVF{nlist},PQ4", train_threshold=100)
    v = np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32)
    for a in (0, 100, 200):
        store.upsert([Item(f"i{i}", v[i]) for i in range(a, a + 100)])   # raised RuntimeError at 100 and 200
        assert store.count() == a + 100
        assert store.info()["index_kind"] == ("IndexFlatIP" if a < 200 else "IndexPreTransform(nlist=8)")
        assert store.search(v[a], k=1)[0][0].id == f"i{a}"


def test_writes_between_the_threshold_and_the_kinds_minimum_rebuild_nothing(open_store, caplog):
    # train_threshold 100, but OPQ trains on at least 256: the gallery at 150..199 stays flat, and each write used
    # to find the store "due" for training, rebuild the same flat index and log two lines about it
    store = open_store(dim=DIM, index="OPQ4,IVF{nlist},PQ4", train_threshold=100)
    v = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
    store.upsert([Item(f"i{i}", v[i]) for i in range(150)])
    caplog.set_level("DEBUG", logger="index")
    caplog.clear()
    for i in range(150, 200):
        store.upsert([Item(f"i{i}", v[i])])
    assert [r.getMessage() for r in caplog.records if r.name == "index"] == []
    assert store.info()["index_kind"] == "IndexFlatIP"
    assert store.info()["train_threshold"] == 256
    assert store.search(v[199], k=1)[0][0].id == "i199"
