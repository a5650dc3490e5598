"""`simsearch index copy`: a gallery moved from a data folder into Milvus and back, in items/s, against
`simsearch index backup` of the same folder (a file-level copy) in the same run.

    .venv/bin/python bench/bench_copy.py [--size 20000] [--tag _s35]

The gallery: `size` random unit vectors of dim 256, a label each, a small metadata object and a 4 KB
thumbnail each (the service's thumbnails of photos took 3.5-4.1 KB at its default 128 px, docs/index.md).
The Milvus is Milvus Lite's own server process on the same machine (bench_milvus.milvus_server). Each
step is the real command in its own process, timed from start to exit (start-up included: about 1 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402
from bench_milvus import milvus_server  # noqa: E402


def fill(path: Path, n: int, dim: int = 256, chunk: int = 5000) -> None:
    import numpy as np

    from index import Item, Store, StoreConfig

    rng = np.random.default_rng(0)
    with Store.open(StoreConfig(path, dim=dim, model_id="bench@copy", index="flat")) as store:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            thumbs = rng.integers(0, 256, (m, 4096), dtype=np.uint8)
            store.upsert([Item(f"g{start + i}", v[i], f"c{(start + i) % 10}", {"i": start + i, "even": i % 2 == 0},
                               thumbnail=thumbs[i].tobytes()) for i in range(m)])


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([_server.simsearch_exe(), *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20_000)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    work = _server.WORK / f"copy-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    t0 = time.perf_counter()
    fill(data / "index", args.size)
    print(f"filled {args.size} items in {time.perf_counter() - t0:.1f} s")
    proc, uri = milvus_server(work / "milvus")
    seconds = {}
    try:
        seconds["backup, folder to folder (reference)"] = timed(["index", "backup", str(work / "backup"), "--data", str(data)])
        seconds["copy, folder to Milvus"] = timed(["index", "copy", "--data", str(data), "--to-milvus-uri", uri])
        seconds["copy, Milvus to folder"] = timed(["index", "copy", "--milvus-uri", uri, "--to-data", str(work / "back")])
        seconds["copy, folder to folder"] = timed(["index", "copy", "--data", str(data), "--to-data", str(work / "copy")])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    ref = seconds["backup, folder to folder (reference)"]
    results = {k: {"seconds": round(s, 2), "items_per_s": round(args.size / s), "x_backup_time": round(s / ref, 2)}
               for k, s in seconds.items()}
    for k, r in results.items():
        print(f"{k:40s} {r['seconds']:8.2f} s {r['items_per_s']:8d} items/s  {r['x_backup_time']:5.2f}x the backup's time")
    _common.write_result("copy" + args.tag, {
        "command": _common.command_line(), "machine": _common.machine(), "loadavg_at_end": list(os.getloadavg()),
        "size": args.size, "dim": 256, "thumbnail_bytes": 4096,
        "milvus": "Milvus Lite server (pure Python), same machine, 127.0.0.1", "results": results,
    })


if __name__ == "__main__":
    main()
