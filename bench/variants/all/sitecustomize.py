"""Benchmark variant (never imported by the project): the proposed changes at once: the involution
forward (P1) and decoding in the batcher's worker (P5); run it with OMP_NUM_THREADS=1 (P2) and
SIMSEARCH_BATCH_MAX_WAIT_MS=0 (P4) for all of them."""
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
for _name in ("involution", "decode_in_worker"):
    runpy.run_path(os.path.join(_here, "..", _name, "sitecustomize.py"))
