"""Benchmark variant (never imported by the project): exact search on a gallery that fits the cache
takes FAISS's BLAS path from BENCH_BLAS_IN_CACHE_FROM queries (index/_faiss.py's
BLAS_MIN_QUERIES_IN_CACHE, 12 on main), to measure where the switch belongs inside the server
(docs/results/benchmarks.md)."""
import os
import sys

from index import _faiss

_faiss.BLAS_MIN_QUERIES_IN_CACHE = int(os.environ.get("BENCH_BLAS_IN_CACHE_FROM", "6"))
sys.stderr.write(f"bench variant blas_in_cache_from active: {_faiss.BLAS_MIN_QUERIES_IN_CACHE} queries\n")
