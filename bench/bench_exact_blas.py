"""FAISS exact search: its SIMD path (one pass over the gallery per query) against its BLAS path
(one pass per block of queries), ms per query, for gallery sizes and query batch sizes. Evidence for
index/_faiss.py tune_exact_search (docs/index.md, "Batched exact search"). Run by hand:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_exact_blas.py [--sizes 10000,30000,100000,300000]
        [--queries 4,6,8,12,16] [--dim 256]

Gaussian random vectors, IndexFlatIP, k=10; the switch is faiss.cvar.distance_compute_blas_threshold
(queries x dim at or above it take BLAS): 1e9 forces SIMD, 1 forces BLAS.
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,100000,300000")
    ap.add_argument("--queries", default="4,6,8,12,16")
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    nqs = [int(x) for x in args.queries.split(",")]
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP thread(s); ms per query at "
          f"{', '.join(map(str, nqs))} queries")
    for ny in (int(x) for x in args.sizes.split(",")):
        idx = faiss.IndexFlatIP(args.dim)
        idx.add(rng.standard_normal((ny, args.dim)).astype("float32"))
        q = rng.standard_normal((max(nqs), args.dim)).astype("float32")
        for name, threshold in (("SIMD", 10 ** 9), ("BLAS", 1)):
            faiss.cvar.distance_compute_blas_threshold = threshold
            row = []
            for n in nqs:
                idx.search(q[:n], 10)
                reps = max(2, int(2e6 / ny))
                t0 = time.perf_counter()
                for _ in range(reps):
                    idx.search(q[:n], 10)
                row.append((time.perf_counter() - t0) / reps * 1e3 / n)
            print(f"{ny:>9,} {name}  " + "  ".join(f"{x:7.3f}" for x in row), flush=True)


if __name__ == "__main__":
    main()
