"""Benchmark variant (never imported by the project): the server decodes small uploads (< 64 KiB of
image bytes in total) on the event loop instead of handing them to a worker thread; larger ones still
go to anyio's thread pool. Evidence for the proposed app/_routes.py change in docs/results/benchmarks.md."""
import sys

import anyio.to_thread

_orig = anyio.to_thread.run_sync
_SMALL = 64 * 1024


async def run_sync(func, *args, **kwargs):
    if getattr(func, "__name__", "") == "_prepare" and len(args) >= 2 and \
            sum(len(data) for _, data in args[1]) < _SMALL:
        return func(*args)
    return await _orig(func, *args, **kwargs)


anyio.to_thread.run_sync = run_sync
sys.stderr.write('bench variant inline_decode active\n')
