"""Resident memory of one process that encodes JPEG thumbnails (as `POST /index` makes them, with
service's `model.make_thumbnail`) on one thread, on a new thread each time, and spread over N long-lived threads
(as anyio's worker threads share a server's requests). One process per case, so each starts clean.

    .venv/bin/python bench/bench_jpeg_threads.py [--ops 72000] [--threads 1,4,12,24] [--decode-only]
        [--env MALLOC_ARENA_MAX=1] [--tag _s40]

--decode-only decodes each JPEG (Pillow's `load`) without making a thumbnail; --env sets a variable in
the processes of the cases (glibc's MALLOC_ARENA_MAX, say).

It explains the slow RSS growth `bench_soak.py` sees in a writer: each live thread that has encoded
JPEGs keeps some memory, so the growth follows the number of worker threads, and levels off.
The reference is the process's RSS after the images are read, before any encoding.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402


def _rss_mib() -> float:
    return _server.rss_bytes(os.getpid()) / 2 ** 20


def _case(mode: str, threads: int, ops: int, decode_only: bool) -> dict:
    """Run in a child process: `ops` thumbnails of CIFAR-10 JPEGs (or decodes), RSS traced five times."""
    import io
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    sys.path.insert(0, str(_common.REPO))
    from model import make_thumbnail

    jpegs = _common.cifar_test_jpegs(200)

    def op(i: int) -> bytes | None:
        im = Image.open(io.BytesIO(jpegs[i % len(jpegs)]))
        if decode_only:
            im.load()
            return None
        return make_thumbnail(im, 128)

    rng = random.Random(0)
    pools = [ThreadPoolExecutor(1) for _ in range(threads)] if mode == "pool" else []
    before, trace = round(_rss_mib(), 1), []
    for i in range(ops):
        if mode == "main":
            op(i)
        elif mode == "new_thread":
            t = threading.Thread(target=op, args=(i,))
            t.start()
            t.join()
        else:
            rng.choice(pools).submit(op, i).result()
        if (i + 1) % (ops // 5) == 0:
            trace.append(round(_rss_mib(), 1))
    return {"mode": mode, "threads": threads, "ops": ops, "decode_only": decode_only, "rss_before_mib": before,
            "trace_mib": trace, "growth_mib": round(trace[-1] - before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=72000)
    ap.add_argument("--threads", default="1,4,12,24", help="sizes of the long-lived thread pool")
    ap.add_argument("--decode-only", action="store_true", help="decode the JPEGs, make no thumbnails")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="set in the cases' processes")
    ap.add_argument("--tag", default="")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "THREADS", "OPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("CASE " + json.dumps(_case(args.child[0], int(args.child[1]), int(args.child[2]), args.decode_only)))
        return
    env = dict(kv.split("=", 1) for kv in args.env)
    cases = [("main", 1), ("new_thread", 1)] + [("pool", int(n)) for n in args.threads.split(",")]
    rows = []
    for mode, n in cases:
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(args.ops)]
                             + (["--decode-only"] if args.decode_only else []),
                             capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
        row = json.loads(next(ln for ln in out.splitlines() if ln.startswith("CASE "))[5:])
        rows.append(row)
        print(f"{mode:10s} threads {n:3d}: {row['rss_before_mib']} MiB -> {row['trace_mib']} "
              f"(+{row['growth_mib']} MiB)", flush=True)
    _common.write_result("jpeg_threads" + args.tag, {"command": _common.command_line(), "machine": _common.machine(),
                                                     "env": env, "decode_only": args.decode_only, "cases": rows})


if __name__ == "__main__":
    main()
