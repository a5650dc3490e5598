"""exact=True on an IVF-PQ gallery reads every stored vector from the database: that scan runs without the
gallery's read lock, so a write (which waits for the lock, and makes every later search wait behind it) and a
plain search go on while it runs, and the answer is still the brute-force one, also for items deleted meanwhile."""
from __future__ import annotations

import threading
import time

import numpy as np

from index import Item, search_grouped

from .conftest import unit

N, K = 40_000, 10


def _filled(open_store, gallery):
    store = open_store(index="ivfpq", train_threshold=1000)
    for a in range(0, len(gallery), 10_000):
        store.upsert([Item(f"i{i}", gallery[i]) for i in range(a, min(len(gallery), a + 10_000))])
    store.rebuild()
    return store


def _brute_force(gallery, queries, k, rows):
    scores = queries @ gallery.T
    return [[f"i{i}" for i in rows[np.lexsort((rows, -s[rows]))][:k]] for s in scores]


def test_a_write_and_a_plain_search_do_not_wait_for_an_exact_scan(open_store, one_faiss_thread):
    rng = np.random.default_rng(3)
    gallery = unit(rng, N)
    store = _filled(open_store, gallery)
    queries = unit(rng, 64)
    # a batch whose scan takes long enough to measure against on a loaded machine (at least 0.4 s)
    while True:
        t = time.perf_counter()
        store.search(queries, k=K, exact=True)
        scan = time.perf_counter() - t
        if scan >= 0.4 or len(queries) >= 4096:
            break
        queries = np.concatenate([queries, queries])
    done: dict[str, float] = {}

    def exact():
        done["exact_answer"] = store.search(queries[:1], k=K, exact=True)[0]   # a warm-up of the same path
        store.search(queries, k=K, exact=True)
        done["exact"] = time.perf_counter()

    def write():
        store.upsert([Item("new", queries[0])])
        done["write"] = time.perf_counter()

    runner = threading.Thread(target=exact)
    runner.start()
    time.sleep(scan / 4)   # the scan is under way
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.02)       # the write waits for the lock now, if the scan holds it
    t = time.perf_counter()
    store.search(queries[:1], k=K)
    done["search"] = time.perf_counter()
    plain = done["search"] - t
    writer.join()
    runner.join()
    assert done["write"] < done["exact"], "the write waited for the exact scan"
    assert done["search"] < done["exact"], "the plain search waited for the exact scan"
    assert plain < scan / 2, (plain, scan)


def test_exact_equals_brute_force_with_items_deleted_and_replaced_meanwhile(open_store):
    rng = np.random.default_rng(4)
    gallery = unit(rng, N)
    store = _filled(open_store, gallery)
    queries = unit(rng, 8)
    truth = _brute_force(gallery, queries, 3 * K, np.arange(N))
    # delete and replace the nearest items of the queries while exact scans run: each answer is the brute force
    # of the gallery as it was at some moment, never a deleted item, never an old version
    nearest = list(dict.fromkeys(i for ids in truth for i in ids[:2]))
    replaced = -queries[0]
    stop = threading.Event()
    answers = []

    def searching():
        while not stop.is_set():
            answers.append(store.search(queries, k=K, exact=True))

    runner = threading.Thread(target=searching)
    runner.start()
    for n, id_ in enumerate(nearest):
        if n % 2:
            store.delete([id_])
        else:   # the same id, far from every query now: a new version (a new FAISS id), labelled "new"
            store.upsert([Item(id_, replaced, label="new")])
        time.sleep(0.01)
    stop.set()
    runner.join()
    answers.append(store.search(queries, k=K, exact=True))
    assert len(answers) >= 2
    gone = set(nearest)
    final = [[i for i in ids if i not in gone][:K] for ids in truth]
    assert [[h.id for h in hits] for hits in answers[-1]] == final
    for found in answers:   # every answer: each id once, each hit's score that of the version it names
        for q, hits in zip(queries, found):
            assert len({h.id for h in hits}) == len(hits)
            for h in hits:
                vector = replaced if h.label == "new" else gallery[int(h.id[1:])]
                assert abs(h.score - float(q @ vector)) < 1e-4, (h, float(q @ vector))
    grouped = store.search_grouped(queries, k=1, group_by="label", group_size=2, exact=True)
    reference = search_grouped(lambda v, n: store.search(v, k=n, exact=True), queries, 1, "label", 2)
    assert [[h.id for h in hits] for hits in grouped] == [[h.id for h in hits] for hits in reference]
    assert any(grouped)
