"""Benchmark variant (never imported by the project): exact search on a gallery of up to 16 MB takes
FAISS's BLAS path from BENCH_BLAS_IN_CACHE_FROM queries (default 12), a larger one from 6: the fixed
rule of index/_faiss.py before the switch was measured per machine (2026-12-03), to compare the two
inside the server (docs/results/benchmarks.md)."""
import os
import sys

import faiss

from index import _faiss

_FROM = int(os.environ.get("BENCH_BLAS_IN_CACHE_FROM", "12"))


def _fixed_rule(index):
    base = _faiss.inner(index)
    if not isinstance(base, faiss.IndexFlat):
        return None
    return _faiss.BLAS_MIN_QUERIES if base.ntotal * base.d * 4 > (16 << 20) else _FROM


_faiss.blas_min_queries = _fixed_rule
sys.stderr.write(f"bench variant blas_in_cache_from active: {_FROM} queries under 16 MB\n")
