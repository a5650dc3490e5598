"""Benchmark variant (never imported by the project): the server runs with the proposed
model/_involution.py forward (bench_embed.proposed_involution_forward) patched onto Involution.
Used by `bench_http.py --variant involution` through PYTHONPATH; see docs/results/benchmarks.md."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import model  # noqa: E402
from bench_embed import proposed_involution_forward  # noqa: E402

model.Involution.forward = proposed_involution_forward
sys.stderr.write('bench variant involution active\n')
