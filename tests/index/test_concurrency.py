"""Searches run while writes happen, and no reader ever sees half of a write."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from index import Item

from .conftest import unit

GROUP = 6


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_concurrent_searches_during_writes_see_each_write_whole(open_store, kind):
    rng = np.random.default_rng(0)
    store = open_store(index=kind, train_threshold=500)
    base = unit(rng, 1000)
    store.upsert([Item(f"bg{i}", base[i], label="bg") for i in range(1000)])
    centre = unit(rng, 1)[0]
    # A group of GROUP items near `centre`; every write replaces the whole group with a new
    # generation (or deletes it), so a reader must see all GROUP hits of one generation, or none.
    def group(gen):
        noise = unit(np.random.default_rng(gen), GROUP) * 0.05
        vecs = centre + noise
        return [Item(f"g{j}", vecs[j], label="group", metadata={"gen": gen, "in": "group"}) for j in range(GROUP)]

    store.upsert(group(0))
    stop = threading.Event()
    errors: list[str] = []
    seen_gens: set[int] = set()
    searches = [0]

    def reader():
        try:
            while not stop.is_set():
                # The label- and metadata-filtered searches are exact in what they return
                # (approximate kinds fall back to exact when short), so they must show the whole
                # group (the metadata index is updated by each write); the unfiltered approximate
                # search may miss a member, but must never mix generations.
                for hits, whole in ((store.search(centre, k=GROUP, label="group")[0], True),
                                    (store.search(centre, k=GROUP, where={"in": "group"})[0], True),
                                    (store.search(centre, k=GROUP)[0], kind == "flat")):
                    gens = {h.metadata["gen"] for h in hits if h.id.startswith("g")}
                    ids = {h.id for h in hits if h.id.startswith("g")}
                    if ids and (len(gens) != 1 or (whole and len(ids) != GROUP)):
                        errors.append(f"half-applied write seen: {sorted(ids)} gens {gens}")
                    seen_gens.update(gens)
                searches[0] += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 60):
            if gen % 10 == 0:
                store.delete([f"g{j}" for j in range(GROUP)])
            store.upsert(group(gen))
            # Unrelated writes too, so that searches interleave with index growth.
            store.upsert([Item(f"extra{gen}-{j}", v) for j, v in enumerate(unit(rng, 5))])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert searches[0] > 20 and len(seen_gens) > 3  # readers really ran during the writes
    assert {h.metadata["gen"] for h in store.search(centre, k=GROUP, label="group")[0]} == {59}
    assert {h.id for h in store.search(centre, k=50, where={"in": "group"})[0]} == {f"g{j}" for j in range(GROUP)}
    assert store.count() == 1000 + GROUP + 59 * 5


def _open_files(path) -> int:
    """This process's open descriptors of the file at `path` (Linux's /proc)."""
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:   # closed since the listing
            pass
    return count


@pytest.mark.parametrize("read_only", [False, True])
def test_a_reading_threads_connection_closes_when_the_thread_ends(open_store, tmp_path, read_only):
    # A service's reading threads come and go (anyio's pool lets idle ones exit); each opened its own
    # connection, and the store kept them all open until it closed: descriptors and page cache grew for
    # as long as the service ran.
    writer = open_store(tmp_path / "s")
    vecs = unit(np.random.default_rng(0), 5)
    writer.upsert([Item(f"id{i}", vecs[i]) for i in range(5)])
    store = open_store(tmp_path / "s", read_only=True) if read_only else writer
    db = (tmp_path / "s" / "store.sqlite3").resolve()
    before = _open_files(db)

    def read():
        assert store.get("id3").id == "id3"

    for _ in range(12):
        t = threading.Thread(target=read)
        t.start()
        t.join()
    # SQLite keeps one closed connection's descriptor while another connection of the process holds a
    # lock on the file (closing it would drop that lock), and hands it to the next connection it opens.
    assert _open_files(db) <= before + 1

    # A thread still reading when the store closes has its connection closed with the store.
    started, release = threading.Event(), threading.Event()

    def read_and_wait():
        read()
        started.set()
        release.wait(10)

    t = threading.Thread(target=read_and_wait)
    t.start()
    started.wait(10)
    store.close()
    writer.close()
    assert _open_files(db) == 0
    release.set()
    t.join()
