"""POST /search with the gallery in Milvus (SIMSEARCH_MILVUS_URI) against the same gallery in the service's
own FAISS store, over real HTTP with wrk, each against GET /healthz on the same server and run.

    .venv/bin/python bench/bench_milvus.py [--size 10000] [--concurrency 1,8,32] [--seconds 8] [--tag _s34]

The Milvus is Milvus Lite's own server process (`python -m milvus_lite server`: pure Python over FAISS,
the one this machine can run; a Milvus cluster is another program), on the same machine, filled with the
same random unit vectors through index.MilvusStore. Cases: the FAISS store (1 process), Milvus with one
service process, Milvus with two (`--workers 2`). Reported per case and concurrency: requests/s, p50/p99
latency, the ratio to /healthz, and the CPU seconds per request of the service's processes and of the
Milvus server.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402
from bench_http import query_files  # noqa: E402


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the uvicorn supervisor's workers)."""
    total = 0.0
    for p in _server.process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return total


def milvus_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _server.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("Milvus Lite did not start")


def fill_milvus(uri: str, n: int, model_id: str, dim: int) -> float:
    """The same vectors, ids and labels as _server.build_gallery (seed 0), into the default gallery (one
    store, flush_every 0, then one flush)."""
    import numpy as np

    from index import Item, MilvusConfig, MilvusStore

    t0 = time.perf_counter()
    store = MilvusStore.open(MilvusConfig(uri, dim=dim, model_id=model_id, flush_every=0))
    rng = np.random.default_rng(0)
    try:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            store.upsert([Item(id=f"g{start + i}", vector=v[i], label=f"c{(start + i) % 10}") for i in range(m)])
        store.snapshot()   # sealed into a segment, as the store does itself every 10,000 rows it writes
        assert store.count() == n
    finally:
        store.close()
    return time.perf_counter() - t0


def run_case(name: str, srv: _server.Server, others: list[int], queries, concs, seconds) -> dict:
    out = {"ready_seconds": srv.wait_ready()}
    mime, files = queries["png32"]
    _server.wrk(srv.url, "/search?k=10", 2, 1, files, mime)   # warm-up
    for conc in concs:
        ref = _server.wrk(srv.url, "/healthz", conc, seconds)
        cpu0 = [_tree_cpu(srv.pid)] + [_tree_cpu(p) for p in others]
        r = _server.wrk(srv.url, "/search?k=10", conc, seconds, files, mime)
        cpu1 = [_tree_cpu(srv.pid)] + [_tree_cpu(p) for p in others]
        n = max(r["requests"], 1)
        r["service_cpu_ms_per_request"] = 1e3 * (cpu1[0] - cpu0[0]) / n
        r["milvus_cpu_ms_per_request"] = (1e3 * sum(b - a for a, b in zip(cpu0[1:], cpu1[1:], strict=True)) / n
                                          if others else 0.0)
        r["healthz_rps"], r["ratio_to_healthz"] = ref["rps"], r["ok_rps"] / ref["rps"] if ref["rps"] else None
        out[f"c{conc}"] = r
        print(f"  {name:22s} c={conc:<3d} /healthz {ref['rps']:7.0f} req/s | /search {r['ok_rps']:7.0f} req/s "
              f"p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:7.2f} ms errors {r['errors']} "
              f"= {100 * r['ratio_to_healthz']:.1f}% of /healthz; CPU ms/request: service "
              f"{r['service_cpu_ms_per_request']:.2f}, Milvus {r['milvus_cpu_ms_per_request']:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import model

    artifact, art_kind = _common.chosen_artifact(None, "bench-milvus-")
    meta = model.read_meta(artifact)
    model_id = model.load_artifact(artifact).model_id
    work = _server.WORK
    work.mkdir(parents=True, exist_ok=True)
    queries = query_files(work)
    concs = [int(c) for c in args.concurrency.split(",")]
    results: dict = {}

    data_dir, _ = _server.build_gallery(args.size, model_id, meta.embed_dim)
    with _server.Server(data_dir, artifact) as srv:
        results["faiss_1_process"] = run_case("FAISS, 1 process", srv, [], queries, concs, args.seconds)

    mdir = work / f"milvus-{os.getpid()}"
    proc, uri = milvus_server(mdir)
    try:
        results["milvus_fill_seconds"] = fill_milvus(uri, args.size, model_id, meta.embed_dim)
        print(f"  filled Milvus with {args.size:,} items in {results['milvus_fill_seconds']:.1f} s")
        for workers in (1, 2):
            extra = ["--milvus-uri", uri] + (["--workers", str(workers)] if workers > 1 else [])
            with _server.Server(work / "unused-data", artifact, extra_args=extra) as srv:
                results[f"milvus_{workers}_process"] = run_case(f"Milvus, {workers} process{'es' if workers > 1 else ''}",
                                                                srv, [proc.pid], queries, concs, args.seconds)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _common.write_result("milvus" + args.tag, {
        "command": _common.command_line(), "machine": _common.machine(), "loadavg_at_end": list(os.getloadavg()),
        "artifact": art_kind, "model_id": model_id, "gallery": args.size,
        "milvus": "Milvus Lite server (pure Python), same machine, 127.0.0.1",
        "wrk": "wrk 4.x, 1 thread, Lua script bench/wrk_multipart.lua, 32x32 PNG queries, k=10",
        "results": results,
    })


if __name__ == "__main__":
    main()
