"""nprobe / k_factor sweep for IVF kinds on bench_index.py's clustered vectors (run by hand):

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep_ivf.py N 'KIND;KIND...' OUT.jsonl

KIND is a preset name or a FAISS factory string; one JSON line per setting: recall@10 against
exact search, p50/p99 ms for one query, ms for a batch of 32. Stores are built under /tmp/sweep.
Results: docs/results/index.md, "IVF and IVF-PQ search parameters"."""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "bench")); sys.path.insert(0, str(_ROOT))
from bench_index import clustered_vectors, exact_top10, DIM
from index import Store, StoreConfig, Item
# a folder name per kind: "/" and "," become "_", brackets are dropped
_DIR_SAFE = str.maketrans({"/": "_", ",": "_", "{": None, "}": None, "(": None, ")": None})
n = int(sys.argv[1]); kinds = sys.argv[2].split(";"); out = sys.argv[3]
gallery = clustered_vectors(n, seed=n); queries = clustered_vectors(320, seed=12345)
truth = exact_top10(gallery, queries)
for kind in kinds:
    path = Path(f"/tmp/sweep/{kind.translate(_DIR_SAFE)}-{n}")
    shutil.rmtree(path, ignore_errors=True)
    st = Store.open(StoreConfig(path, dim=DIM, model_id="bench@000000000000", index=kind, snapshot_every=0))
    t0 = time.perf_counter()
    for s in range(0, n, 10000):
        st.upsert([Item(f"id{i}", gallery[i]) for i in range(s, min(n, s + 10000))])
    st.rebuild(); build = time.perf_counter() - t0
    st.close()
    print(kind, n, "built in", round(build), "s", flush=True)
    grid = [(p, None) for p in (16, 32, 64, 125, 250, 500)] if kind == "ivf" else [(p, kf) for p in (32, 125, 500) for kf in (8, 32)] if "fp16" in kind else \
           [(p, kf) for p in (32, 64, 128, 500) for kf in (8, 16, 32, 64)]
    for nprobe, kf in grid:
        st = Store.open(StoreConfig(path, read_only=True, nprobe=nprobe, k_factor=kf))
        st.search(queries[:4], k=10)
        lat = []
        for q in queries[:200]:
            t = time.perf_counter(); st.search(q, k=10); lat.append(time.perf_counter() - t)
        res = st.search(queries, k=10)
        ids = [[int(h.id[2:]) for h in r] for r in res]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth.tolist(), strict=True)]))
        t = time.perf_counter()
        for s in range(0, 320, 32): st.search(queries[s:s + 32], k=10)
        b32 = (time.perf_counter() - t) / 10
        row = dict(kind=kind, n=n, nprobe=nprobe, k_factor=kf, recall10=recall,
                   p50_ms_b1=float(np.median(lat) * 1e3), p99_ms_b1=float(np.percentile(lat, 99) * 1e3), ms_b32=b32 * 1e3)
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        st.close()
