"""Benchmark variant (never imported by the project): the server does not freeze the objects it
loaded out of the garbage collector's reach (app/_service.py calls gc.freeze() once ready), so the
before/after of that change can be measured (docs/results/benchmarks.md)."""
import gc
import sys

gc.freeze = lambda: None
sys.stderr.write("bench variant no_gc_freeze active\n")
