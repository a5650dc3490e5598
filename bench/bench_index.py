"""Benchmark of the gallery store (run by hand, not a test).

For each gallery size and index kind: add rate through Store.upsert (batches, and single durable
writes), build/train time, snapshot and re-open (recovery) time, search latency p50/p99 for
batches of 1 and 32 queries, and recall@10 against exact search. `--vectors random` (the default):
random unit vectors, the hardest case for approximate search (no cluster structure at all).
`--vectors clustered`: a seeded two-level Gaussian mixture on the unit sphere (see
clustered_vectors), calibrated so that the presets' recall at 5,000 items is close to what they
reach on real embeddings; see docs/results/index.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_index.py --sizes 10000,100000,1000000 --out /tmp/bench-index.jsonl
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index import Item, Store, StoreConfig  # noqa: E402

DIM = 256


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# The clustered distribution: CENTRES cluster centres, each drawn around one of GROUPS group
# centres, and points drawn around a centre. A spread s is Gaussian noise of norm ~s added to a unit
# vector before normalising (cosine ~1/sqrt(1+s^2) to the centre). With these values (calibrated at
# 5,000 items against tests/index/test_recall.py on real embeddings) a query's nearest neighbour
# has cosine ~0.5, its 10th ~0.23 and its 100th ~0.15, and IVF/HNSW/IVF-PQ recall@10 at 5,000 is
# 0.97 / 1.00 / 0.93 (real embeddings: 0.96 / 0.99 / 0.96).
CENTRES, GROUPS, GROUP_SPREAD, SPREAD, CENTRE_SEED = 2000, 32, 1.65, 1.0, 2024


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, seed: int) -> np.ndarray:
    """n unit vectors from the fixed mixture (same centres for every seed; queries use another
    seed than the gallery, so they come from the same distribution but are not gallery members)."""
    r = np.random.default_rng(CENTRE_SEED)
    groups = _unit(r.standard_normal((GROUPS, DIM), dtype=np.float32))
    centres = _unit(groups[r.integers(0, GROUPS, CENTRES)]
                    + r.standard_normal((CENTRES, DIM), dtype=np.float32) * (GROUP_SPREAD / DIM ** 0.5))
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        out[s:s + m] = _unit(centres[rng.integers(0, CENTRES, m)]
                             + rng.standard_normal((m, DIM), dtype=np.float32) * (SPREAD / DIM ** 0.5))
    return out


VECTORS = {"random": unit_vectors, "clustered": clustered_vectors}


def exact_top10(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for s in range(0, len(gallery), 200_000):
        sc = queries @ gallery[s:s + 200_000].T
        top = np.argpartition(-sc, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + s], 1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def percentile_ms(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, p))


def run(kind: str, n: int, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray,
        workdir: Path, batch: int, vectors=unit_vectors) -> dict:
    path = workdir / f"{kind}-{n}"
    shutil.rmtree(path, ignore_errors=True)
    cfg = StoreConfig(path, dim=DIM, model_id="bench@000000000000", index=kind, snapshot_every=0,
                      train_threshold=min(10_000, n))
    row: dict = {"kind": kind, "n": n}
    store = Store.open(cfg)
    # Bulk add: one transaction (one fsync) per batch. Training happens when the gallery reaches
    # the threshold (inside an upsert), so it is part of this time, as it would be for a user.
    t0 = time.perf_counter()
    ids = [f"img/{i:07d}.jpg" for i in range(n)]
    for s in range(0, n, batch):
        store.upsert([Item(ids[i], gallery[i]) for i in range(s, min(n, s + batch))])
        done, el = min(n, s + batch), time.perf_counter() - t0
        if n >= 100_000 and done % 100_000 == 0:  # progress, so that a cut-short run still tells
            print(f"  {kind} {n}: {done:,} added in {el:.0f}s ({done / el:,.0f}/s)", file=sys.stderr, flush=True)
    row["add_s"] = time.perf_counter() - t0
    row["add_per_s"] = n / row["add_s"]
    # Retrain on the whole gallery (what snapshot() does once it has grown 4x past training).
    t0 = time.perf_counter()
    if kind in ("ivf", "ivfpq"):
        store.rebuild()
    row["rebuild_s"] = time.perf_counter() - t0
    row["index_kind"] = store.info()["index_kind"]
    # Single durable writes (fsync each): the acknowledged-write rate of one client.
    extra = vectors(200, seed=n + 7)
    t0 = time.perf_counter()
    for i, v in enumerate(extra):
        store.upsert([Item(f"single/{i}", v)])
    row["single_upserts_per_s"] = len(extra) / (time.perf_counter() - t0)
    store.delete([f"single/{i}" for i in range(len(extra))])
    # Search latency.
    store.search(queries[:4], k=10)  # warm-up
    lat1 = []
    for q in queries[:200]:
        t0 = time.perf_counter()
        store.search(q, k=10)
        lat1.append(time.perf_counter() - t0)
    lat32 = []
    found = []
    for s in range(0, len(queries), 32):
        t0 = time.perf_counter()
        res = store.search(queries[s:s + 32], k=10)
        lat32.append(time.perf_counter() - t0)
        found += res
    row.update(p50_ms_b1=percentile_ms(lat1, 50), p99_ms_b1=percentile_ms(lat1, 99),
               p50_ms_b32=percentile_ms(lat32, 50), p99_ms_b32=percentile_ms(lat32, 99),
               qps_b32=32 / float(np.median(lat32)))
    row["recall10"] = float(np.mean([len({int(h.id[4:11]) for h in hits} & set(t.tolist())) / 10
                                     for hits, t in zip(found, truth, strict=True)]))
    # Durability costs: snapshot on close, then a restart (load snapshot, replay nothing).
    t0 = time.perf_counter()
    store.close()
    row["snapshot_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = Store.open(StoreConfig(path))
    row["reopen_s"] = time.perf_counter() - t0
    store.close()
    row["disk_mb"] = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    shutil.rmtree(path, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq")
    ap.add_argument("--large-kinds", default="flat,hnsw",
                    help="kinds run at sizes >= 1M (the others are skipped to keep the run bounded)")
    ap.add_argument("--queries", type=int, default=320)
    ap.add_argument("--vectors", choices=sorted(VECTORS), default="random",
                    help="random unit vectors, or the clustered mixture (see clustered_vectors)")
    ap.add_argument("--batch", type=int, default=10_000, help="items per upsert in the bulk add")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="append one JSON line per result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-index-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# {platform.node()} nproc={os.cpu_count()} cpu={cpu} faiss={faiss.__version__} "
          f"omp_threads={faiss.omp_get_max_threads()} load={os.getloadavg()[0]:.1f} vectors={args.vectors}", flush=True)
    vectors = VECTORS[args.vectors]
    queries = vectors(args.queries, seed=12345)
    kinds = args.kinds.split(",")
    large = set(args.large_kinds.split(","))
    print("| kind | n | index | add items/s | 1-item durable upserts/s | rebuild s | p50 ms (1 q) | "
          "p99 ms (1 q) | p50 ms (32 q) | p99 ms (32 q) | recall@10 | snapshot s | reopen s | disk MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in (int(x) for x in args.sizes.split(",")):
        gallery = vectors(n, seed=n)
        truth = exact_top10(gallery, queries)
        for kind in kinds:
            if n >= 1_000_000 and kind not in large:
                print(f"| {kind} | {n:,} | skipped (see --large-kinds) |", flush=True)
                continue
            r = run(kind, n, gallery, queries, truth, workdir, args.batch, vectors)
            r.update(vectors=args.vectors, load=os.getloadavg()[0])
            print(f"| {kind} | {n:,} | {r['index_kind']} | {r['add_per_s']:,.0f} | {r['single_upserts_per_s']:,.0f} | "
                  f"{r['rebuild_s']:.1f} | {r['p50_ms_b1']:.2f} | {r['p99_ms_b1']:.2f} | {r['p50_ms_b32']:.1f} | "
                  f"{r['p99_ms_b32']:.1f} | {r['recall10']:.3f} | {r['snapshot_s']:.1f} | {r['reopen_s']:.1f} | "
                  f"{r['disk_mb']:,.0f} |", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
        del gallery
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
