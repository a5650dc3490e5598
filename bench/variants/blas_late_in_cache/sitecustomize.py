"""Benchmark variant (never imported by the project): exact search on a gallery of up to 16 MB keeps
FAISS's own BLAS switch (500 queries at dim 256), as before index/_faiss.py moved it (2026-11-30):
the blas_in_cache_from variant with that many queries (docs/results/benchmarks.md)."""
import os
import runpy
from pathlib import Path

import faiss

os.environ.setdefault("BENCH_BLAS_IN_CACHE_FROM", str(int(faiss.cvar.distance_compute_blas_threshold) // 256))
runpy.run_path(str(Path(__file__).resolve().parents[1] / "blas_in_cache_from" / "sitecustomize.py"))
