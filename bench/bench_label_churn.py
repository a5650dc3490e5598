"""A gallery whose items keep taking new labels, as one keyed by SKU, order or user id does: does the server's
memory, or the time of GET /facets?field=label, grow with every label the gallery ever held?

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_label_churn.py [--writes 200000] [--modes unique,fixed]
        [--every 25000] [--server-env K=V] [--tag _s54]

For each mode a fresh `simsearch serve` (the bundled model, an empty data folder) gets 500 fixed ids
(item-0 .. item-499, one random vector each) re-posted over and over by POST /index with a JSON body of 50
items, each write replacing an item with a new label, --writes item writes in all. The gallery never holds
more than 500 items.
- unique: every write gives its item a label never used before (sku-0, sku-1, ...): the gallery holds at most
  500 labels at a time, --writes of them over the run;
- fixed: the labels come from 50 (sku-0 .. sku-49), the reference.
Every --every writes the server's RSS is read and GET /facets?field=label, GET /index?limit=10 and the last
batch of 10 writes are timed (the median of 20 calls of each read). A server that kept an entry for every
label ever held grows and slows in the unique mode only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402

IDS = 500
BATCH = 50
FIXED_LABELS = 50


def _median_ms(http, path: str, params: dict, calls: int = 20) -> float:
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = http.get(path, params=params)
        ms.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
    return round(statistics.median(ms), 2)


def _sample(http, srv: _server.Server, writes: int, write_ms: list[float]) -> dict:
    facets = http.get("/facets", params={"field": "label", "limit": 1}).json()
    return {"writes": writes, "items": http.get("/index", params={"limit": 0}).json()["count"],
            "labels_held": facets["distinct"], "rss_mib": round(srv.rss_bytes() / 2 ** 20, 1),
            "facets_label_ms": _median_ms(http, "/facets", {"field": "label"}),
            "index_list_ms": _median_ms(http, "/index", {"limit": 10}),
            "post_50_ms": round(statistics.median(write_ms), 1) if write_ms else None}


def _run(mode: str, args, artifact: Path, env: dict) -> dict:
    import httpx
    import numpy as np

    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-label-churn-{mode}-"))
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    print(f"mode {mode}")
    print(f"{'writes':>8} {'items':>6} {'labels':>7} {'RSS MiB':>8} {'facets ms':>10} {'list ms':>8} {'POST ms':>8}")
    with _server.Server(data_dir, artifact, env=env, log_path=data_dir / "server.log") as srv, \
            httpx.Client(base_url=srv.url, timeout=120, trust_env=False) as http:
        srv.wait_ready()
        info = http.get("/index", params={"limit": 0}).json()
        vectors = rng.standard_normal((IDS, info["dimension"])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vl = vectors.tolist()
        writes, write_ms = 0, []
        t0 = time.perf_counter()
        while True:
            if writes % args.every == 0 or writes >= args.writes:
                rows.append(_sample(http, srv, writes, write_ms[-10:]))
                r = rows[-1]
                print(f"{r['writes']:8d} {r['items']:6d} {r['labels_held']:7d} {r['rss_mib']:8.1f} "
                      f"{r['facets_label_ms']:10.2f} {r['index_list_ms']:8.2f} {r['post_50_ms'] or 0:8.1f}", flush=True)
            if writes >= args.writes:
                break
            start = writes % IDS
            items = [{"id": f"item-{i}", "vector": vl[i],
                      "label": f"sku-{writes + k}" if mode == "unique" else f"sku-{i % FIXED_LABELS}"}
                     for k, i in enumerate(range(start, start + BATCH))]
            t1 = time.perf_counter()
            r = http.post("/index", json={"model": info["model"], "items": items})
            write_ms.append((time.perf_counter() - t1) * 1000)
            if r.status_code != 201:
                raise SystemExit(f"POST /index: {r.status_code} {r.text[:300]}")
            writes += BATCH
        seconds = time.perf_counter() - t0
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"mode": mode, "seconds": round(seconds, 1), "samples": rows,
            "rss_growth_mib": round(rows[-1]["rss_mib"] - rows[1]["rss_mib"], 1) if len(rows) > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=200_000, help="item writes a mode (a multiple of 500)")
    ap.add_argument("--modes", default="unique,fixed")
    ap.add_argument("--every", type=int, default=25_000, help="sample every this many item writes (a multiple of 50)")
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in ("unique", "fixed")]:
        ap.error(f"--modes: {unknown} are neither unique nor fixed")
    if args.writes % IDS or args.every % BATCH:
        ap.error(f"--writes must be a multiple of {IDS}, --every of {BATCH}")
    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-label-churn-")
    env = {"NO_PROXY": "127.0.0.1,localhost", **dict(kv.split("=", 1) for kv in args.server_env)}
    result: dict = {"command": _common.command_line(), "machine": _common.machine(), "artifact": art_kind,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "writes": args.writes, "ids": IDS,
                    "batch": BATCH, "every": args.every, "server_env": env,
                    "runs": [_run(mode, args, artifact, env) for mode in modes]}
    for run in result["runs"]:
        first, last = run["samples"][0], run["samples"][-1]
        print(f"{run['mode']:6s} {run['seconds']:6.0f} s: RSS {first['rss_mib']} -> {last['rss_mib']} MiB "
              f"(+{run['rss_growth_mib']} after the first {args.every} writes), /facets?field=label "
              f"{first['facets_label_ms']} -> {last['facets_label_ms']} ms, labels held {last['labels_held']}")
    _common.write_result("label_churn" + args.tag, result)


if __name__ == "__main__":
    main()
