"""What the HTTP stack costs per request, layer by layer, next to the service's /healthz and /search.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_http_floor.py [--connections 8] [--seconds 8] [--tag _x]

A tiny FastAPI app (bench/trivial_app.py) under uvicorn with the service's settings (uvloop,
httptools, one worker) answers: GET /healthz; POST /form (multipart parse only); /form_thread (+ one
worker-thread hop); /form_two_hops (+ a second hop through a one-thread executor, as the batcher
does); /form_decode (the first hop decodes the 32x32 PNG and preprocesses it); /raw (the image as the
body, read); /raw_pipeline (the image as the body, one hop that decodes, embeds it alone and searches
a flat 10,000-item FAISS index: the least any search endpoint does), for the 32x32 PNG queries and
for the 640x480 JPEG photos. Then the service (10,000-item gallery) answers GET /healthz and POST
/search with the same queries, multipart and as the body. wrk with one thread, same concurrency for
all; reported: requests/s, the server's CPU ms per request and wrk's (the load generator shares the
machine's cores), each against the trivial app's /healthz in the same run, and the ceiling that the
machine's cores put on requests/s: cores x 1000 / (server + wrk CPU ms per request).
"""
from __future__ import annotations

import argparse
import os
import resource
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


def start_trivial(port: int, env: dict[str, str]) -> subprocess.Popen:
    code = ("import uvicorn; uvicorn.run('trivial_app:create_app', factory=True, host='127.0.0.1', "
            f"port={port}, log_level='warning', proxy_headers=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, **env})
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the trivial app did not start")


def in_process_ms(artifact: Path, batch: int = 8, gallery: int = 10_000) -> dict[str, float]:
    """What the worker's three steps cost per image in this process, alone and warm (best of 5 x 200
    repetitions, one thread): decoding a 32x32 PNG, embedding a batch, a flat FAISS search of it."""
    import io

    import faiss
    import numpy as np
    import torch
    from PIL import Image

    import model

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    embedder = model.Embedder.from_file(artifact, device="cpu")
    pngs = _common.png_32(batch)
    index = _common.random_flat_index(gallery, embedder.dim)

    def decode():
        return np.stack([embedder.preprocess(Image.open(io.BytesIO(b))) for b in pngs])

    arrays = decode()
    queries = embedder.embed_arrays(arrays)
    steps = {"decode": decode, "embed": lambda: embedder.embed_arrays(arrays), "search": lambda: index.search(queries, 10)}
    out = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(200):
                step()
            best = min(best, (time.perf_counter() - t0) / 200)
        out[f"{name}_ms_per_image"] = 1e3 * best / batch
    out["total_ms_per_image"] = sum(out.values())
    return {"batch": batch, "gallery": gallery, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--tag", default="", help="suffix of the result file: docs/results/bench_http_floor<TAG>.json")
    args = ap.parse_args()
    import model

    machine = _common.machine()
    queries = query_files(_server.WORK)
    mime, files = queries["png32"]
    jpeg_mime, jpeg_files = queries["jpeg640"]
    c, sec = args.connections, args.seconds
    rows: dict = {}
    cores = os.cpu_count() or 1

    def client_cpu_s() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is this process's child
        return ru.ru_utime + ru.ru_stime

    def run(name, url, path, pid, with_files=True, raw=False, kind=(mime, files)):
        cpu0, client0 = _server.cpu_seconds(pid), client_cpu_s()
        r = _server.wrk(url, path, c, sec, kind[1] if with_files else (), kind[0] if with_files else "", raw=raw)
        r["client_cpu_ms_per_request"] = 1e3 * (client_cpu_s() - client0) / max(r["requests"], 1)
        r.update(cpu_per_request(_server.cpu_seconds(pid), cpu0, r["requests"], pid))
        r["cores_ceiling_rps"] = cores * 1e3 / (r["server_cpu_ms_per_request"] + r["client_cpu_ms_per_request"])
        rows[name] = r

    if args.artifact:
        artifact = args.artifact.resolve()
    else:
        artifact, _ = _common.default_or_seeded_artifact(Path(tempfile.mkdtemp(prefix="bench-floor-")))
    port = _server.free_port()
    proc = start_trivial(port, {"FLOOR_ARTIFACT": str(artifact), "FLOOR_GALLERY": "10000"})
    url = f"http://127.0.0.1:{port}"
    try:
        _server.wrk(url, "/form_decode", 2, 1, files, mime)  # warm-up
        _server.wrk(url, "/raw_pipeline", 2, 1, files, mime, raw=True)
        run("trivial GET /healthz", url, "/healthz", proc.pid, with_files=False)
        for path in ("/form", "/form_thread", "/form_two_hops", "/form_decode"):
            run(f"trivial POST {path}", url, path, proc.pid)
        run("trivial POST /raw", url, "/raw", proc.pid, raw=True)
        run("trivial POST /raw_pipeline", url, "/raw_pipeline", proc.pid, raw=True)
        run("trivial POST /raw_pipeline JPEG", url, "/raw_pipeline", proc.pid, raw=True,
            kind=(jpeg_mime, jpeg_files))
    finally:
        proc.terminate()
        proc.wait(30)

    alone = in_process_ms(artifact)
    meta = model.read_meta(artifact)
    data_dir, _ = _server.build_gallery(10_000, model.load_artifact(artifact).model_id, meta.embed_dim)
    with _server.Server(data_dir, artifact) as srv:
        srv.wait_ready()
        _server.wrk(srv.url, "/search?k=10", 2, 1, files, mime)
        run("service GET /healthz", srv.url, "/healthz", srv.pid, with_files=False)
        run("service POST /search (10k)", srv.url, "/search?k=10", srv.pid)
        run("service POST /search raw (10k)", srv.url, "/search?k=10", srv.pid, raw=True)
        run("service POST /search JPEG (10k)", srv.url, "/search?k=10", srv.pid, kind=(jpeg_mime, jpeg_files))

    ref = rows["trivial GET /healthz"]
    print(f"c={c}, {sec:.0f} s per case, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'case':34s} {'req/s':>8s} {'% of trivial':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms/req':>11s} "
          f"{'main thread':>12s} {'wrk ms/req':>11s} {'cores ceiling':>14s}")
    for name, r in rows.items():
        r["ratio_to_trivial_healthz"] = r["ok_rps"] / ref["rps"]
        r["ceiling_ratio_to_trivial_healthz"] = r["cores_ceiling_rps"] / ref["rps"]
        main = r["server_cpu_ms_per_request_by_thread"].get("main", 0.0)
        print(f"{name:34s} {r['ok_rps']:8.0f} {100 * r['ratio_to_trivial_healthz']:11.1f}% {r['p50_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['server_cpu_ms_per_request']:11.3f} {main:12.3f} "
              f"{r['client_cpu_ms_per_request']:11.3f} {r['cores_ceiling_rps']:8.0f} ({100 * r['ceiling_ratio_to_trivial_healthz']:.0f}%)")
    print("the worker's steps alone in this process, ms per image at batch {batch}: ".format(**alone)
          + ", ".join(f"{k[:-len('_ms_per_image')]} {v:.3f}" for k, v in alone.items() if k.endswith("_ms_per_image")))
    _common.write_result("http_floor" + args.tag, {"command": _common.command_line(), "machine": machine,
                                        "loadavg_at_end": list(os.getloadavg()),
                                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cores": cores,
                                        "connections": c, "seconds": sec, "results": rows,
                                        "worker_steps_alone": alone})


if __name__ == "__main__":
    main()
