"""Benchmark variant (never imported by the project): the micro-batcher shares each batch's decoding
with BENCH_DECODE_THREADS - 1 helper threads (default 2 threads in all): whichever thread decodes a
batch (the model thread, or the decode thread working ahead) hands all but one share of its images to
the helpers and decodes the last share itself. Tried in the thirty-second session and not kept
(docs/results/benchmarks.md)."""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from app import _batcher

_THREADS = int(os.environ.get("BENCH_DECODE_THREADS", "2"))
_helpers = ThreadPoolExecutor(max_workers=max(1, _THREADS - 1), thread_name_prefix="simsearch-decode-help")
_decode_one_thread = _batcher.MicroBatcher._decode   # the staticmethod, as a plain function


def _decode_shared(batch):
    todo = [job for job in batch if job.decode is not None]
    shares = min(len(todo), _THREADS)
    if shares < 2:
        _decode_one_thread(todo)
        return
    helped = [_helpers.submit(_decode_one_thread, todo[i::shares]) for i in range(1, shares)]
    _decode_one_thread(todo[0::shares])
    for f in helped:
        f.result()


_batcher.MicroBatcher._decode = staticmethod(_decode_shared)
sys.stderr.write(f"bench variant decode_helpers active: {_THREADS} threads decode a batch\n")
