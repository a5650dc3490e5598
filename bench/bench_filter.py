"""Metadata filters (`where`) on Store.search: what the first filter on a key costs (building its
index), a filtered search afterwards, a write while keys are indexed, and the memory a key's index
keeps (the process's RSS growth).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_filter.py [--sizes 100000,1000000] [--dim 256]
        [--index-keys source,album,year]

Each gallery is random unit vectors with metadata like a photo library's: {"source": one of 3,
"album": one of 1,000, "year": one of 25, "t": the item's number (a key with a million distinct values)},
labels c0..c9, in a flat index (index.Store directly,
in this process, in a temporary folder). References in the same run: the unfiltered search and the
label filter (whose index the store has always kept). Queries: batches of 8, k=10, median of
--rounds; every filtered answer is checked against brute force over the same vectors.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from index import Item, Store, StoreConfig  # noqa: E402


def meta(i: int) -> dict:
    return {"source": ("phone", "camera", "scan")[i % 3], "album": f"a{i % 1000}", "year": 2000 + i % 25, "t": i}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def brute(X: np.ndarray, q: np.ndarray, keep: np.ndarray, k: int) -> list[list[str]]:
    idx = np.flatnonzero(keep)
    S = X[idx] @ q.T
    return [[f"g{idx[j]}" for j in np.argsort(-S[:, c], kind="stable")[:k]] for c in range(len(q))]


def run(n: int, dim: int, rounds: int, index_keys: list[str]) -> dict:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.standard_normal((8, dim), dtype=np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    ii = np.arange(n)
    out: dict = {"items": n, "dim": dim}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(StoreConfig(path=Path(tmp) / "index", dim=dim, model_id="bench@0", index="flat",
                                       snapshot_every=0))
        try:
            t0 = time.perf_counter()
            for a in range(0, n, 10_000):
                store.upsert([Item(f"g{i}", X[i], f"c{i % 10}", meta(i)) for i in range(a, min(n, a + 10_000))])
            out["fill_seconds"] = time.perf_counter() - t0
            print(f"{n:,} items filled in {out['fill_seconds']:.0f} s", flush=True)
            if index_keys:  # as SIMSEARCH_FILTER_KEYS does at start-up: the first searches then find them built
                rss0, t0 = rss_mb(), time.perf_counter()
                values = store.index_metadata(index_keys)
                out["index_metadata"] = {"keys": index_keys, "seconds": time.perf_counter() - t0,
                                         "distinct_values": values, "rss_growth_mb": rss_mb() - rss0}
                print(f"  index_metadata({', '.join(index_keys)}): {out['index_metadata']['seconds']:.1f} s, "
                      f"RSS +{out['index_metadata']['rss_growth_mb']:.0f} MiB", flush=True)
            cases = {
                "unfiltered": ({}, np.ones(n, bool)),
                "label (1 in 10)": ({"label": "c3"}, ii % 10 == 3),
                "source (1 in 3)": ({"where": {"source": "phone"}}, ii % 3 == 0),
                "album (1 in 1,000)": ({"where": {"album": "a7"}}, ii % 1000 == 7),
                "a key no item has": ({"where": {"camera": "x"}}, np.zeros(n, bool)),
                "label + year (1 in 50)": ({"label": "c3", "where": {"year": 2003}}, (ii % 10 == 3) & (ii % 25 == 3)),
                "source + album (1 in 3,000)": (
                    {"where": {"source": "camera", "album": "a7"}}, (ii % 3 == 1) & (ii % 1000 == 7)),
                # operators (session 24): ranges and sets are unions of the key's value sets
                "year $gte/$lt (1 in 5)": ({"where": {"year": {"$gte": 2005, "$lt": 2010}}},
                                           (ii % 25 >= 5) & (ii % 25 < 10)),
                "album $in 3 (3 in 1,000)": ({"where": {"album": {"$in": ["a7", "a8", "a9"]}}},
                                             (ii % 1000 >= 7) & (ii % 1000 <= 9)),
                "source $ne (2 in 3)": ({"where": {"source": {"$ne": "phone"}}}, ii % 3 != 0),
                "t $lt n/10 (1 in 10, n values)": ({"where": {"t": {"$lt": n // 10}}}, ii < n // 10),
                "t $gte n/1000 (999 in 1,000)": ({"where": {"t": {"$gte": n // 1000}}}, ii >= n // 1000),
            }
            res = {}
            for name, (kw, keep) in cases.items():
                rss0 = rss_mb()
                t0 = time.perf_counter()
                first = store.search(Q, k=10, **kw)
                first_ms = (time.perf_counter() - t0) * 1e3
                grown = rss_mb() - rss0  # what the first search kept: a key's index, the cached ids
                ms, hits = timed(lambda: store.search(Q, k=10, **kw), rounds)
                got = [[h.id for h in row] for row in hits]
                exact = got == brute(X, Q, keep, 10) and [[h.id for h in row] for row in first] == got
                res[name] = {"matching": int(keep.sum()), "first_ms": first_ms, "median_ms": ms, "exact": exact,
                             "rss_growth_mb": grown}
                print(f"  {name:30s} {int(keep.sum()):>9,d} match  first {first_ms:8.1f} ms  then {ms:7.2f} ms  "
                      f"RSS +{grown:6.1f} MiB  exact {exact}", flush=True)
            out["searches"] = res
            # a write of 1,000 items, with the three keys indexed by now, then the first filtered search
            batch = [Item(f"g{i}", X[i], f"c{i % 10}", {**meta(i), "year": 1999}) for i in range(1000)]
            w_ms, _ = timed(lambda: store.upsert(batch), 1)
            t0 = time.perf_counter()
            after = store.search(Q, k=10, where={"year": 1999})
            after_ms = (time.perf_counter() - t0) * 1e3
            out["write_1000_ms_keys_indexed"] = w_ms
            out["filtered_search_after_write_ms"] = after_ms
            ok = all(len(row) == 10 and all(h.metadata["year"] == 1999 for h in row) for row in after)
            print(f"  write of 1,000 items with 3 keys indexed {w_ms:.0f} ms; the next filtered search "
                  f"{after_ms:.1f} ms (right items: {ok})", flush=True)
        finally:
            store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--index-keys", default="", help="comma-separated keys for Store.index_metadata before the searches")
    args = ap.parse_args()
    machine = _common.machine()
    keys = [k for k in args.index_keys.split(",") if k]
    results = [run(int(s), args.dim, args.rounds, keys) for s in args.sizes.split(",")]
    path = _common.RESULTS / f"bench_filter{args.tag}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
