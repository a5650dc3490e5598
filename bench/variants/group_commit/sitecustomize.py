"""Benchmark variant (never imported by the project): POST /index requests that arrive while a
Store.upsert is being committed wait and are committed together in the next one (group commit:
one SQLite transaction and one fsync for all of them). Patched in from outside for before/after
numbers (docs/results/benchmarks.md); a failing batch fails every request in it, which the app
would have to refine."""
import asyncio
import sys

import anyio.to_thread

_orig_run_sync = anyio.to_thread.run_sync
_pending: list = []
_flushing = False


def _is_store_upsert(func) -> bool:
    owner = getattr(func, "__self__", None)
    return getattr(func, "__name__", "") == "upsert" and type(owner).__name__ == "Store"


async def _flush(upsert) -> None:
    global _flushing
    try:
        while _pending:
            batch = list(_pending)
            _pending.clear()
            items = [item for part, _ in batch for item in part]
            try:
                await _orig_run_sync(upsert, items)
            except BaseException as exc:  # noqa: BLE001
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for part, fut in batch:
                if not fut.done():
                    fut.set_result(len(part))
    finally:
        _flushing = False


async def run_sync(func, *args, **kwargs):
    global _flushing
    if _is_store_upsert(func) and len(args) == 1 and not kwargs:
        fut = asyncio.get_running_loop().create_future()
        _pending.append((list(args[0]), fut))
        if not _flushing:
            _flushing = True
            asyncio.get_running_loop().create_task(_flush(func))
        return await fut
    return await _orig_run_sync(func, *args, **kwargs)


anyio.to_thread.run_sync = run_sync
sys.stderr.write("bench variant group_commit active\n")
