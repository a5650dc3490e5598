"""Benchmark variant (never imported by the project): every query image goes through the micro-batcher,
as before slow-to-decode images were decoded apart (app/_embedding.py, _embedded), for the before/after of
bench_slow_decode.py."""
import sys

import app._embedding as _embedding

_embedding.SLOW_DECODE_PIXELS = float("inf")   # what _embedded compares each image's whole-decoded pixels with
sys.stderr.write("bench variant no_slow_decode_lane active\n")
