"""Recall@10 of each approximate preset against exact search, on real embeddings of real images."""
from __future__ import annotations

import numpy as np
import pytest

from index import PRESET_NAMES, Item

RECALL_FLOOR = 0.95


@pytest.mark.slow
@pytest.mark.parametrize("kind", [p for p in PRESET_NAMES if p != "flat"])
def test_approximate_preset_recall_at_10_against_exact_is_at_least_095(open_store, tmp_path, cifar_embeddings, kind):
    gallery, labels, queries, model_id = cifar_embeddings
    items = [Item(f"cifar/{i}", gallery[i], label=labels[i]) for i in range(len(gallery))]
    exact = open_store(tmp_path / "exact", dim=gallery.shape[1], model_id=model_id, index="flat")
    exact.upsert(items)
    # Train at 2,000 so that a 5,000-image gallery really runs the trained IVF / IVF-PQ index.
    approx = open_store(tmp_path / kind, dim=gallery.shape[1], model_id=model_id, index=kind,
                        train_threshold=2000)
    for start in range(0, len(items), 1000):
        approx.upsert(items[start:start + 1000])
    approx.rebuild()  # train on the whole gallery, as a snapshot of a grown gallery would
    assert not approx.info()["exact"]
    truth = exact.search(queries, k=10)
    found = approx.search(queries, k=10)
    recall = np.mean([len({h.id for h in f} & {h.id for h in t}) / 10 for f, t in zip(found, truth)])
    print(f"{kind}: {approx.info()['index_kind']} recall@10 = {recall:.4f} on {len(gallery)} "
          f"real embeddings ({model_id})")
    assert recall >= RECALL_FLOOR, f"{kind} recall@10 {recall:.4f} < {RECALL_FLOOR}"
    # With a label filter (one class in ten) each query still gets 10 hits of that label, close
    # to what exact search returns.
    overlap = []
    for f, t in zip(approx.search(queries, k=10, label="cat"), exact.search(queries, k=10, label="cat")):
        assert len(f) == 10 and {h.label for h in f} == {"cat"}
        overlap.append(len({h.id for h in f} & {h.id for h in t}) / 10)
    print(f"{kind}: label-filtered recall@10 = {np.mean(overlap):.4f}")
    assert np.mean(overlap) >= 0.9
