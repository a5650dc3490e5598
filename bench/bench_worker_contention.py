"""What the batcher's work costs in its own thread when the thread is not alone, eager against traced.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_worker_contention.py [--batches 100]

One worker thread does what the service's worker does for one batch of 8 queries (decode 8 32x32
PNGs, embed them with model.Embedder, a flat FAISS search of 10,000 random unit vectors), over and over,
and reports its own CPU time (time.thread_time) and wall time per image in four settings:
- alone: nothing else runs;
- gap: an 18 ms sleep between batches (the server's cycle at 8 connections), so caches go cold;
- gil: another Python thread of the same process spins all the time (as the event loop does under
  load), so the worker has to win the GIL back after every call that released it;
- cores: two busy processes occupy the machine's two cores (as wrk and the event loop do).
Each with the Embedder's TorchScript graph (trace=True, the default) and with its eager modules.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402


def _spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i


def measure(embedder: model.Embedder, index, pngs: list[bytes], batches: int, setting: str) -> dict:
    def one_batch():
        arrays = np.stack([embedder.preprocess(Image.open(io.BytesIO(b))) for b in pngs])
        index.search(embedder.embed_arrays(arrays), 10)

    one_batch()
    out: dict = {}

    def work():
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(batches):
            one_batch()
            if setting == "gap":
                time.sleep(0.018)
        n = batches * len(pngs)
        out["thread_cpu_ms_per_image"] = 1e3 * (time.thread_time() - c0) / n
        out["wall_ms_per_image"] = 1e3 * (time.perf_counter() - w0) / n

    stop, extra, procs = threading.Event(), None, []
    if setting == "gil":
        extra = threading.Thread(target=_spin, args=(stop,))
        extra.start()
    elif setting == "cores":
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        stop.set()
        if extra is not None:
            extra.join()
        for p in procs:
            p.kill()
            p.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--artifact", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    artifact = args.artifact or model.default_artifact_path()
    embedders = {"traced": model.Embedder.from_file(artifact, device="cpu"),
                 "eager": model.Embedder.from_file(artifact, device="cpu", trace=False)}
    index = _common.random_flat_index(10_000, embedders["eager"].dim)
    pngs = _common.png_32(8)
    machine = _common.machine()
    rows = {}
    print(f"{'setting':8s} {'network':7s} {'thread CPU ms/image':>20s} {'wall ms/image':>14s}")
    for setting in ("alone", "gap", "gil", "cores"):
        for name, emb in embedders.items():
            r = measure(emb, index, pngs, args.batches, setting)
            rows[f"{setting}_{name}"] = r
            print(f"{setting:8s} {name:7s} {r['thread_cpu_ms_per_image']:20.3f} {r['wall_ms_per_image']:14.3f}")
    _common.write_result("worker_contention", {"command": _common.command_line(), "machine": machine,
                                               "artifact": str(artifact), "batch": len(pngs), "gallery": 10_000,
                                               "batches": args.batches, "results": rows})


if __name__ == "__main__":
    main()
