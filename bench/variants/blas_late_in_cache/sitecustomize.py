"""Benchmark variant (never imported by the project): exact search on a gallery that fits the cache
keeps FAISS's own BLAS switch (500 queries at dim 256), as before index/_faiss.py switched at
BLAS_MIN_QUERIES_IN_CACHE, so the before/after of that change can be measured
(docs/results/benchmarks.md)."""
import sys

import faiss

from index import _faiss

_faiss.BLAS_MIN_QUERIES_IN_CACHE = int(faiss.cvar.distance_compute_blas_threshold) // 256
sys.stderr.write(f"bench variant blas_late_in_cache active: {_faiss.BLAS_MIN_QUERIES_IN_CACHE} queries\n")
