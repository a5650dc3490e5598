"""exact=True on an IVF-PQ gallery scans the stored vectors outside the read lock; an item chosen for the scan and
deleted before the scan read it is dropped from the answer, as the exact fallback drops it (55429d9), instead of
scanning again from scratch: under steady deletes every scan could lose one, and the search gave up after
SEARCH_RETRY_SECONDS with the "a bug: please report it" StoreError (the differential hunt's task, item 4)."""
from __future__ import annotations

import numpy as np

from index import Item

from .conftest import unit

N, K = 5_000, 10


def test_an_exact_search_whose_every_scan_loses_an_item_deleted_meanwhile_answers_without_it(open_store):
    rng = np.random.default_rng(5)
    gallery = unit(rng, N)
    store = open_store(index="ivfpq", train_threshold=1000)
    store.upsert([Item(f"i{i}", gallery[i], label="ab"[i % 2]) for i in range(N)])
    store.SEARCH_RETRY_SECONDS = 1   # (10 s in the service) a search that keeps meeting deletes gives up sooner
    queries = unit(rng, 3)
    nearest = [f"i{i}" for i in np.argsort(-(queries[0] @ gallery.T), kind="stable")]
    deleted: list[str] = []
    scan = store._exact_scan

    def scan_after_a_delete(*args):
        # a delete committed (and applied) after the scan chose its items, before it reads them: every scan, as
        # a steady stream of deletes makes it
        deleted.append(nearest[len(deleted)])
        store.delete(deleted[-1:])
        return scan(*args)

    store._exact_scan = scan_after_a_delete
    found = store.search(queries, k=K, exact=True)
    assert 1 <= len(deleted) <= 2
    for q, hits in zip(queries, found):
        left = [i for i in range(N) if f"i{i}" not in deleted]
        truth = [f"i{left[j]}" for j in np.argsort(-(q @ gallery[left].T), kind="stable")[:K]]
        assert [h.id for h in hits] == truth
    grouped = store.search_grouped(queries, k=2, group_by="label", group_size=K, exact=True)
    assert [len(hits) for hits in grouped] == [2 * K] * len(queries)
    assert not set(deleted) & {h.id for hits in grouped for h in hits}
