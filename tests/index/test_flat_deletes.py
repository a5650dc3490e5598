"""A flat gallery hides the vectors of deleted and replaced items instead of removing each from FAISS at once
(IndexIDMap.remove_ids is O(n) under the write lock: 49 ms for one id at 1M vectors, so every delete stalled every
search), reads past them in its searches, and removes them all in one pass once more than flat_hidden_max are
hidden. Answers stay exact throughout: each is compared with a brute-force answer over the items left."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item
from index._store_open import FLAT_HIDDEN_MIN, flat_hidden_max

DIM = 16
MODEL = "test-model@000000000000"


def _unit(rng, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _Gallery:
    """What the store should hold: id -> (vector, label), in the order the items were (last) written."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[np.ndarray, str]] = {}

    def upsert(self, store, items: list[Item]) -> None:
        store.upsert(items)
        for it in items:
            self.items.pop(it.id, None)   # a replaced item moves to the end
            self.items[it.id] = (it.vector, it.label)

    def delete(self, store, ids: list[str]) -> None:
        assert sorted(store.delete(ids)) == sorted(i for i in ids if i in self.items)
        for i in ids:
            self.items.pop(i, None)

    def nearest(self, q: np.ndarray, k: int, label: str | None = None, exclude: str | None = None) -> list[str]:
        ids = [i for i, (_v, lab) in self.items.items() if (label is None or lab == label) and i != exclude]
        vectors = np.stack([self.items[i][0] for i in ids]).astype(np.float64)
        scores = (vectors @ q.astype(np.float64)).astype(np.float32)   # the true inner product, rounded once
        order = sorted(range(len(ids)), key=lambda j: (-scores[j], j))   # ties: the order written
        return [ids[j] for j in order[:k]]


def _check_exact(store, gallery: _Gallery, queries: np.ndarray) -> None:
    batch = store.search(queries, k=10)
    for qv, hits in zip(queries, batch):
        assert [h.id for h in hits] == gallery.nearest(qv, 10)
    for qv in queries[:4]:
        assert [h.id for h in store.search(qv, k=25, label="a")[0]] == gallery.nearest(qv, 25, label="a")
        assert [h.id for h in store.search(qv, k=10, exact=True)[0]] == gallery.nearest(qv, 10)
    some = next(iter(gallery.items))
    assert [h.id for h in store.search_by_id(some, k=10)] == gallery.nearest(gallery.items[some][0], 10,
                                                                              exclude=some)


def test_deletes_and_replacements_on_a_flat_gallery_are_hidden_and_answers_stay_exact(open_store):
    rng = np.random.default_rng(0)
    store, gallery = open_store(dim=DIM, index="flat"), _Gallery()
    v = _unit(rng, 800)
    gallery.upsert(store, [Item(f"i{i}", v[i], "ab"[i % 2]) for i in range(800)])
    queries = np.concatenate([_unit(rng, 12), v[rng.choice(800, 12, replace=False)]])
    hidden = 0
    for step in range(40):   # random deletes and replacements, fewer than the most hidden in all
        ids = [f"i{j}" for j in rng.choice(800, 3, replace=False)]
        if step % 2:
            hidden += sum(i in gallery.items for i in ids)
            gallery.delete(store, ids)
        else:
            hidden += len(ids)
            gallery.upsert(store, [Item(i, _unit(rng, 1)[0], "ab"[step % 4 // 2]) for i in ids])
        assert store.info()["removed_pending"] == hidden   # was 0: each removed from FAISS at once
        if step % 8 == 7:
            _check_exact(store, gallery, queries)
    assert 0 < hidden <= FLAT_HIDDEN_MIN
    # near a deleted item's vector, it never comes back (the hidden copy is the nearest FAISS holds)
    gone = [i for i in range(800) if f"i{i}" not in gallery.items][:5]
    for i in gone:
        assert f"i{i}" not in {h.id for h in store.search(v[i], k=5)[0]}
    _check_exact(store, gallery, queries)


def test_a_flat_gallery_removes_its_hidden_vectors_in_one_pass_past_the_most_it_hides(open_store):
    rng = np.random.default_rng(1)
    store, gallery = open_store(dim=DIM, index="flat"), _Gallery()
    v = _unit(rng, 1000)
    gallery.upsert(store, [Item(f"i{i}", v[i], "ab"[i % 2]) for i in range(1000)])
    most = flat_hidden_max(1000)
    gallery.delete(store, [f"i{i}" for i in range(most)])
    assert store.info()["removed_pending"] == most
    assert store._index.ntotal == 1000   # still held, hidden
    gallery.delete(store, [f"i{most}"])   # one more than the most: all removed together
    assert store.info()["removed_pending"] == 0
    assert store._index.ntotal == store.count() == 1000 - most - 1
    _check_exact(store, gallery, np.concatenate([_unit(rng, 8), v[:8], v[-8:]]))


@pytest.mark.parametrize("reopen", ["reopened", "follower"])
def test_hidden_vectors_stay_hidden_in_a_reopened_store_and_a_follower(open_store, tmp_path, reopen):
    rng = np.random.default_rng(2)
    store, gallery = open_store(dim=DIM, index="flat"), _Gallery()
    v = _unit(rng, 400)
    gallery.upsert(store, [Item(f"i{i}", v[i], "ab"[i % 2]) for i in range(400)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None) \
        if reopen == "follower" else None
    store.snapshot()   # holds the vectors hidden after it too: the next open hides them again
    gallery.delete(store, [f"i{i}" for i in range(0, 200, 3)])
    gallery.upsert(store, [Item(f"i{i}", _unit(rng, 1)[0], "b") for i in range(1, 100, 5)])
    store.snapshot()
    gallery.delete(store, [f"i{i}" for i in range(300, 320)])
    if reader is None:
        store.close()
        reader = open_store(path=tmp_path / "store", dim=DIM)
    else:
        reader.refresh()
    assert 0 < reader.info()["removed_pending"] <= FLAT_HIDDEN_MIN
    _check_exact(reader, gallery, np.concatenate([_unit(rng, 8), v[:40:5]]))
