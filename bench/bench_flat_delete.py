"""How long one delete holds a flat gallery's write lock (every search waits that long), removing the vector from
FAISS at once (IndexIDMap.remove_ids: O(n), the "before") against hiding it until flat_hidden_max are hidden and
removing them then in one pass (index._store_open._remove_fids, the "after"); and what a search costs while the
most are hidden (it reads that many more candidates). Store.delete of one id at a time on a Store of random unit
vectors, the two schemes alternated block by block in one process.

    .venv/bin/python bench/bench_flat_delete.py [--items 100000,1000000] [--dim 256] [--deletes 40] [--json PATH]

"before" is index._store_open.flat_hidden_max patched to return -1 (every delete removes what is hidden, its own id
alone, at once): the code as it was before. The write lock's hold time is measured around Store._rw.write()."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import command_line, machine, random_store  # noqa: E402


def _timed_write_lock(store, held: list[float]) -> None:
    """Store._rw.write records how long each hold lasted into `held`."""
    write = store._rw.write

    @contextmanager
    def timed():
        with write():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                held.append(time.perf_counter() - t0)
    store._rw.write = timed


def _ms(xs: list[float]) -> dict:
    return {"median_ms": round(1e3 * statistics.median(xs), 3), "max_ms": round(1e3 * max(xs), 3),
            "n": len(xs)}


def _search_with_and_without(store, hidden: set[int], dim: int, rounds: int = 15) -> dict:
    """Median ms of the FAISS search a Store.search at k=10 makes (27 candidates: Store._faiss_locked) for 1 and 32
    queries with the `hidden` vectors read past, against the same index with none hidden (Store._dead emptied for
    that timing only), alternated; and of Store.search itself with them hidden."""
    queries = {"1 query": np.random.default_rng(1).standard_normal((1, dim)).astype(np.float32),
               "32 queries": np.random.default_rng(2).standard_normal((32, dim)).astype(np.float32)}
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for what, q in queries.items():
            for name, dead in (("most hidden", hidden), ("none hidden", set()))[::1 if r % 2 else -1]:
                store._dead = dead
                t0 = time.perf_counter()
                with store._rw.read():
                    store._faiss_locked(q, 27, None, len(store._rows))
                times.setdefault(f"FAISS {what}, {name}", []).append(time.perf_counter() - t0)
            store._dead = hidden
            t0 = time.perf_counter()
            store.search(q, k=10)
            times.setdefault(f"Store.search {what}, most hidden", []).append(time.perf_counter() - t0)
    return {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()}


def study(n: int, dim: int, deletes: int) -> dict:
    import index._store_open as store_open

    real = store_open.flat_hidden_max
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        store = random_store(Path(d) / "s", n, dim)
        made = time.perf_counter() - t0
        store_open.flat_hidden_max = lambda ntotal: -1   # compact what is hidden, at once
        store.delete(["i0"])
        held: list[float] = []
        _timed_write_lock(store, held)
        times: dict[str, list[float]] = {"before": [], "after": []}
        victim = iter(range(1, n))
        for block in range(deletes // 5):   # blocks of 5, the schemes alternated
            for name in ("before", "after") if block % 2 else ("after", "before"):
                store_open.flat_hidden_max = (lambda ntotal: -1) if name == "before" else real
                for _ in range(5):
                    store.delete([f"i{next(victim)}"])   # before: remove_ids of this one (and after's hidden)
                    times[name].append(held[-1])
        store_open.flat_hidden_max = real
        most = real(store._index.ntotal)
        store.delete([f"i{next(victim)}" for _ in range(most - len(store._dead))])
        assert len(store._dead) == most
        search = _search_with_and_without(store, store._dead, dim)
        store.delete([f"i{next(victim)}"])
        compaction = held[-1]
        assert not store._dead, "the delete past the most hidden removes them all"
        store.close()
        store_open.flat_hidden_max = real
    out = {"items": n, "dim": dim, "gallery_made_s": round(made, 1),
           "write_lock_one_delete": {k: _ms(v) for k, v in times.items()},
           "most_hidden": most, "write_lock_compaction_ms": round(1e3 * compaction, 3),
           "search_k10_ms": search}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--deletes", type=int, default=40, help="deletes timed a scheme (in blocks of 5)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = [study(int(n), args.dim, args.deletes) for n in args.items.split(",")]
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "machine": machine(), "results": results},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
