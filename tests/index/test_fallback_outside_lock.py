"""A filtered search on an IVF-PQ gallery whose index finds fewer allowed items than asked (the probed lists hold
too few of them) answers those queries exactly from the stored vectors: that scan runs without the gallery's read
lock, so a write (which waits for the lock, and makes every later search wait behind it) goes on while it runs;
the answer is the brute-force one over the items the filter keeps, never an item deleted or replaced before it
is made (an item written while the scan runs may be missing from it)."""
from __future__ import annotations

import threading
import time

import numpy as np

from index import Item, search_grouped

from .conftest import unit

N, K = 40_000, 100
GROUPS = 4   # metadata "g" is i % GROUPS: the filter {"g": 0} keeps a quarter of the gallery


def _filled(open_store, gallery):
    # nprobe=1: a filter keeping a quarter widens it to 4 of the ~800 lists, ~50 allowed items a query: K=100 is short
    store = open_store(index="ivfpq", train_threshold=1000, nprobe=1)
    for a in range(0, len(gallery), 10_000):
        store.upsert([Item(f"i{i}", gallery[i], metadata={"g": i % GROUPS})
                      for i in range(a, min(len(gallery), a + 10_000))])
    store.rebuild()
    return store


def _brute_force(gallery, queries, k, rows):
    scores = queries @ gallery.T
    return [[f"i{i}" for i in rows[np.lexsort((rows, -s[rows]))][:k]] for s in scores]


def test_a_write_and_a_plain_search_do_not_wait_for_the_exact_fallback(open_store, one_faiss_thread):
    rng = np.random.default_rng(5)
    gallery = unit(rng, N)
    store = _filled(open_store, gallery)
    queries = unit(rng, 16)
    where = {"g": 0}
    store.search(queries[:1], k=K, where=where)   # the filter's metadata index, built once, under the lock
    # a batch whose fallback takes long enough to measure against on a loaded machine (at least 0.8 s), most of it
    # the scan (the index's part, before and after it, takes a few milliseconds on one thread)
    while True:
        t = time.perf_counter()
        found = store.search(queries, k=K, where=where)
        took = time.perf_counter() - t
        if took >= 0.8 or len(queries) >= 8192:
            break
        queries = np.concatenate([queries, queries])
    assert [len(hits) for hits in found] == [K] * len(queries)   # the fallback's doing: the index finds ~50
    for _ in range(3):   # a write begun in the first half of the fallback (a loaded machine may start it late)
        done = _write_and_search_during(store, queries, where, took)
        timings = {name: round(at - done["fallback_start"], 3) for name, at in done.items()} | {"took": took}
        if done["write_start"] - done["fallback_start"] < (done["fallback"] - done["fallback_start"]) / 2:
            break
    else:
        raise AssertionError(f"no write began in the first half of the fallback: {timings}")
    # Holding the lock for its scan, the fallback would make the write wait for its end, and the plain search
    # (behind the waiting write: the lock prefers writers) too.
    assert done["write"] < done["fallback"], f"the write waited for the fallback's scan: {timings}"
    assert done["search"] < done["fallback"], f"the plain search waited for the fallback's scan: {timings}"


def _write_and_search_during(store, queries, where, took) -> dict[str, float]:
    """When (time.perf_counter()) a fallback search of `queries` (taking about `took` s) began and ended, and a write
    and a plain search begun while it ran began and ended."""
    done: dict[str, float] = {}
    warm = threading.Event()

    def fallback():
        store.search(queries[:1], k=K, where=where)   # a warm-up of the same path
        done["fallback_start"] = time.perf_counter()
        warm.set()
        store.search(queries, k=K, where=where)
        done["fallback"] = time.perf_counter()

    def write():
        done["write_start"] = time.perf_counter()
        store.upsert([Item("new", queries[0], metadata={"g": 1})])
        done["write"] = time.perf_counter()

    runner = threading.Thread(target=fallback)
    runner.start()
    warm.wait()
    time.sleep(took / 8)   # the scan is under way
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.02)       # the write waits for the lock now, if the scan holds it
    store.search(queries[:1], k=10)
    done["search"] = time.perf_counter()
    writer.join()
    runner.join()
    return done


def test_the_fallback_equals_brute_force_over_the_items_the_filter_keeps(open_store):
    rng = np.random.default_rng(6)
    gallery = unit(rng, N)
    store = _filled(open_store, gallery)
    queries = unit(rng, 12)
    rows = np.arange(N)
    for where, keep in (({"g": 0}, rows % GROUPS == 0), ({"g": {"$in": [1, 3]}}, rows % 2 == 1),
                        ({"g": {"$ne": 2}}, rows % GROUPS != 2)):
        found = store.search(queries, k=K, where=where)
        assert [[h.id for h in hits] for hits in found] == _brute_force(gallery, queries, K, rows[keep])
        for q, hits in zip(queries, found):
            expected = gallery[[int(h.id[1:]) for h in hits]] @ q
            assert np.allclose([h.score for h in hits], expected, atol=1e-5)
    # search_by_id leaves the item out; the fallback does too
    by_id = store.search_by_id("i0", k=K, where={"g": 0})
    assert [h.id for h in by_id] == _brute_force(gallery, gallery[:1], K + 1, rows[rows % GROUPS == 0])[0][1:]
    grouped = store.search_grouped(queries, k=3, group_by="metadata.g", group_size=40, where={"g": {"$ne": 2}})
    reference = search_grouped(lambda v, n: store.search(v, k=n, where={"g": {"$ne": 2}}), queries, 3,
                               "metadata.g", 40)
    assert [[h.id for h in hits] for hits in grouped] == [[h.id for h in hits] for hits in reference]
    assert all(len(hits) == 120 for hits in grouped)


def test_the_fallback_never_returns_an_item_deleted_or_replaced_before_it_answers(open_store):
    rng = np.random.default_rng(7)
    gallery = unit(rng, N)
    store = _filled(open_store, gallery)
    queries = unit(rng, 8)
    where = {"g": 0}
    rows = np.arange(N)
    truth = _brute_force(gallery, queries, 2 * K, rows[rows % GROUPS == 0])
    # delete and replace the nearest items of the queries while fallback searches run: no answer holds an
    # item whose delete (or replacement) had returned before that search began, or an old version's score
    nearest = list(dict.fromkeys(i for ids in truth for i in ids[:4]))
    replaced = -queries[0]
    stop = threading.Event()
    gone_before: list[set[str]] = []
    answers = []
    gone: set[str] = set()

    def searching():
        while not stop.is_set():
            before = set(gone)
            answers.append(store.search(queries, k=K, where=where))
            gone_before.append(before)

    runner = threading.Thread(target=searching)
    runner.start()
    for n, id_ in enumerate(nearest):
        if n % 2:
            store.delete([id_])
        else:   # the same id, far from every query now: a new version (a new FAISS id), labelled "new"
            store.upsert([Item(id_, replaced, label="new", metadata={"g": 0})])
        gone.add(id_)
        time.sleep(0.01)
    stop.set()
    runner.join()
    answers.append(store.search(queries, k=K, where=where))
    gone_before.append(set(gone))
    assert len(answers) >= 2
    final = [[i for i in ids if i not in set(nearest)][:K] for ids in truth]
    assert [[h.id for h in hits] for hits in answers[-1]] == final
    for found, before in zip(answers, gone_before):
        for q, hits in zip(queries, found):
            assert len({h.id for h in hits}) == len(hits) == K
            for h in hits:
                assert h.label == "new" or h.id not in before, (h.id, "deleted or replaced before the search")
                vector = replaced if h.label == "new" else gallery[int(h.id[1:])]
                assert abs(h.score - float(q @ vector)) < 1e-4, (h, float(q @ vector))

