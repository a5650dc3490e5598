"""Benchmark variant (never imported by the project): every query image goes through the micro-batcher,
as before slow-to-decode images were decoded apart (app/_embedding.py, _embedded), for the before/after of
bench_slow_decode.py."""
import sys

import app._embedding as _embedding

_embedding.slow_to_decode = lambda *args, **kwargs: False
sys.stderr.write("bench variant no_slow_decode_lane active\n")
