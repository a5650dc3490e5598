"""Benchmark variant (never imported by the project): /search hands the raw image bytes to the
micro-batcher, whose worker thread decodes them together with the model call and the search, so a
request makes one thread hop per batch instead of one per request (decode) plus one per batch.
Patched in from outside for before/after numbers (docs/results/benchmarks.md, P5); error handling
of bad images is not what the app would do (a bad image here fails its whole batch)."""
import sys

import anyio.to_thread

import app._batcher as _batcher

_orig_run_sync = anyio.to_thread.run_sync


class _Deferred:
    """Stands in for the uint8 array of one request until the batcher's worker decodes it."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __len__(self):
        return len(self.args[1])

    def resolve(self):
        arrays, _ = self.func(*self.args)
        return arrays


async def run_sync(func, *args, **kwargs):
    if getattr(func, "__name__", "") == "_prepare" and len(args) == 3 and args[2] == 0:
        return _Deferred(func, args), None
    return await _orig_run_sync(func, *args, **kwargs)


_orig_process = _batcher.MicroBatcher._process


def _process(self, batch):
    for job in batch:
        if isinstance(job.arrays, _Deferred):
            job.arrays = job.arrays.resolve()
    return _orig_process(self, batch)


anyio.to_thread.run_sync = run_sync
_batcher.MicroBatcher._process = _process
sys.stderr.write("bench variant decode_in_worker active\n")
