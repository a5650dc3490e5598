"""What the HTTP stack costs per request, layer by layer, next to the service's /healthz and /search.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_http_floor.py [--connections 8] [--seconds 8]

A tiny FastAPI app (bench/trivial_app.py) under uvicorn with the service's settings (uvloop,
httptools, one worker) answers: GET /healthz; POST /form (multipart parse only); /form_thread (+ one
worker-thread hop); /form_two_hops (+ a second hop through a one-thread executor, as the batcher
does); /form_decode (the first hop decodes the 32x32 PNG and preprocesses it). Then the service
(10,000-item gallery) answers GET /healthz and POST /search with the same PNG queries. wrk with one
thread, same concurrency for all; reported: requests/s and server CPU ms per request, each against
the trivial app's /healthz in the same run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402
from bench_http import cpu_per_request, query_files  # noqa: E402


def start_trivial(port: int) -> subprocess.Popen:
    code = ("import uvicorn; uvicorn.run('trivial_app:create_app', factory=True, host='127.0.0.1', "
            f"port={port}, log_level='warning', proxy_headers=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the trivial app did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--artifact", type=Path)
    args = ap.parse_args()
    import model

    machine = _common.machine()
    mime, files = query_files(_server.WORK)["png32"]
    c, sec = args.connections, args.seconds
    rows: dict = {}

    def run(name, url, path, pid, with_files=True):
        cpu0 = _server.cpu_seconds(pid)
        r = _server.wrk(url, path, c, sec, files if with_files else (), mime if with_files else "")
        r.update(cpu_per_request(_server.cpu_seconds(pid), cpu0, r["requests"], pid))
        rows[name] = r

    port = _server.free_port()
    proc = start_trivial(port)
    url = f"http://127.0.0.1:{port}"
    try:
        _server.wrk(url, "/form_decode", 2, 1, files, mime)  # warm-up
        run("trivial GET /healthz", url, "/healthz", proc.pid, with_files=False)
        for path in ("/form", "/form_thread", "/form_two_hops", "/form_decode"):
            run(f"trivial POST {path}", url, path, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    if args.artifact:
        artifact = args.artifact.resolve()
    else:
        artifact, _ = _common.default_or_seeded_artifact(Path(tempfile.mkdtemp(prefix="bench-floor-")))
    meta = model.read_meta(artifact)
    data_dir, _ = _server.build_gallery(10_000, model.load_artifact(artifact).model_id, meta.embed_dim)
    with _server.Server(data_dir, artifact) as srv:
        srv.wait_ready()
        _server.wrk(srv.url, "/search?k=10", 2, 1, files, mime)
        run("service GET /healthz", srv.url, "/healthz", srv.pid, with_files=False)
        run("service POST /search (10k)", srv.url, "/search?k=10", srv.pid)

    ref = rows["trivial GET /healthz"]
    print(f"c={c}, {sec:.0f} s per case, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'case':30s} {'req/s':>8s} {'% of trivial':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms/req':>11s} "
          f"{'main thread':>12s}")
    for name, r in rows.items():
        r["ratio_to_trivial_healthz"] = r["ok_rps"] / ref["rps"]
        main = r["server_cpu_ms_per_request_by_thread"].get("main", 0.0)
        print(f"{name:30s} {r['ok_rps']:8.0f} {100 * r['ratio_to_trivial_healthz']:11.1f}% {r['p50_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['server_cpu_ms_per_request']:11.3f} {main:12.3f}")
    _common.write_result("http_floor", {"command": _common.command_line(), "machine": machine,
                                        "loadavg_at_end": list(os.getloadavg()),
                                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                        "connections": c, "seconds": sec, "results": rows})


if __name__ == "__main__":
    main()
