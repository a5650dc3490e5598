"""The rate limit's cost a request: the in-memory token buckets of one process (`RateLimiter`) against the
SQLite file that `serve --workers N` gives its workers to share (`SharedRateLimiter`), one process alone
and two taking at once, in the same run.

    .venv/bin/python bench/bench_rate_limit.py [--tag _s36]

Each take is for one of 1,000 clients (as behind a gateway with many users), limit 10**9 a minute so
that every take is allowed and writes its bucket. The file is on this machine's disk (where the
temporary folder of `serve --workers` is).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402

from app._rate_limit import RateLimiter, SharedRateLimiter  # noqa: E402

CLIENTS = [f"ip:10.0.{i // 256}.{i % 256}" for i in range(1000)]


def _takes(limiter, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        limiter.take(CLIENTS[i % len(CLIENTS)])
    return time.perf_counter() - t0


def _child(path: str, n: int, ready, start, out) -> None:
    limiter = SharedRateLimiter(path, 10**9)
    ready.put(True)
    start.wait()
    out.put(_takes(limiter, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--takes", type=int, default=20000)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    n = args.takes
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "rate-limits.sqlite")
        memory, shared = RateLimiter(10**9), SharedRateLimiter(path, 10**9)
        _takes(memory, 2000), _takes(shared, 2000)   # warm
        for name, limiter in (("in_memory_one_process", memory), ("sqlite_one_process", shared)):
            results[name] = {"us_per_take": round(_takes(limiter, n) / n * 1e6, 2)}
        ctx = multiprocessing.get_context("spawn")
        ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_child, args=(path, n, ready, start, out)) for _ in range(2)]
        for p in procs:
            p.start()
        ready.get(timeout=60), ready.get(timeout=60)
        t0 = time.perf_counter()
        start.set()
        each = [out.get(timeout=600), out.get(timeout=600)]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        results["sqlite_two_processes_at_once"] = {
            "us_per_take_each": [round(s / n * 1e6, 2) for s in each],
            "takes_per_second_both": round(2 * n / wall)}
        shared.close()
    for k, v in results.items():
        print(k, v)
    _common.write_result(f"rate_limit{args.tag}", {"command": _common.command_line(), "machine": _common.machine(),
                                                  "takes": n, "clients": len(CLIENTS), "results": results})


if __name__ == "__main__":
    main()
