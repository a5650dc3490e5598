"""A MilvusStore search answers min(k, matching) items, as the FAISS store does, also where Milvus's approximate
index finds fewer: IVF_FLAT probes too few of its lists (a filter keeping few items, a small nprobe) once the rows
are sealed and indexed, and HNSW's graph (a small ef) misses filtered items. The store searches IVF again probing
every list (exact), and compares HNSW's matching rows itself (the differential hunt, finding 2)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from index import Item, MilvusConfig, MilvusStore  # noqa: E402

DIM, N = 16, 250
MODEL = "test-model@000000000000"


@pytest.fixture
def sealed(tmp_path):
    """sealed(kind) -> a MilvusStore of N items, every 25th labelled "cat" (album: true), its rows sealed."""
    opened = []

    def _open(kind: str) -> tuple[MilvusStore, np.ndarray]:
        v = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store = MilvusStore.open(MilvusConfig(uri=str(tmp_path / f"{kind}.db"), dim=DIM, model_id=MODEL, index=kind))
        opened.append(store)
        store.upsert([Item(f"i{i}", v[i], label="cat" if i % 25 == 0 else "dog", metadata={"album": i % 25 == 0})
                      for i in range(N)])
        store.snapshot()   # sealed into a segment and indexed
        return store, v

    yield _open
    for s in opened:
        s.close()


def _exact(v: np.ndarray, q: np.ndarray, k: int, rows: list[int]) -> list[list[str]]:
    scores = q @ v[rows].T
    return [[f"i{rows[j]}" for j in np.argsort(-s, kind="stable")[:k]] for s in scores]


@pytest.mark.parametrize("filter_", [{"label": "cat"}, {"where": {"album": True}}], ids=["label", "where"])
def test_a_filtered_ivf_search_finds_every_matching_item_it_is_asked_for(sealed, filter_):
    store, v = sealed("ivf")
    q = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cats = list(range(0, N, 25))
    assert store.count(**filter_) == len(cats)
    for k in (5, 10, 25):
        found = store.search(q, k=k, **filter_)
        assert [[h.id for h in hits] for hits in found] == _exact(v, q, k, cats)


def test_search_by_id_with_one_list_probed_finds_k_neighbours(sealed):
    store, v = sealed("ivf")
    for i in (0, 7, 123):
        hits = store.search_by_id(f"i{i}", k=4, nprobe=1)
        assert len(hits) == 4 and f"i{i}" not in [h.id for h in hits]
        cats = [j for j in range(0, N, 25) if j != i]
        assert [h.id for h in store.search_by_id(f"i{i}", k=4, label="cat", nprobe=1)] == \
            _exact(v, v[i:i + 1], 4, cats)[0]


def test_a_filtered_hnsw_search_with_a_small_ef_finds_every_matching_item(sealed):
    store, v = sealed("hnsw")
    q = np.random.default_rng(2).standard_normal((20, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    found = store.search(q, k=10, label="cat", ef_search=1)
    assert [[h.id for h in hits] for hits in found] == _exact(v, q, 10, list(range(0, N, 25)))
