"""Benchmark variant (never imported by the project): the micro-batcher runs each batch (decode,
embed, search) on the event loop's own thread instead of handing it to its worker thread, so no
thread hop and no GIL hand-over per batch; the loop is blocked while a batch is worked on
(docs/results/benchmarks.md, twenty-first session)."""
import concurrent.futures
import sys


class _InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001  (handed to the awaiting coroutine)
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        pass


import app._batcher as _batcher  # noqa: E402

_init = _batcher.MicroBatcher.__init__


def _patched_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self._executor.shutdown(wait=False)
    self._executor = _InlineExecutor()


_batcher.MicroBatcher.__init__ = _patched_init
sys.stderr.write("bench variant inline_batch active\n")
