"""End-to-end POST /search over real HTTP with wrk, against GET /healthz on the same server and run.

    .venv/bin/python bench/bench_http.py [--sizes 10000,1000000] [--concurrency 1,8,32] [--seconds 8]
        [--server-env OMP_NUM_THREADS=1] [--py-spy DIR] [--artifact PATH]

For each gallery size: a data directory is filled through index.Store directly with random unit
vectors (cached under $SIMSEARCH_BENCH_DIR, default /tmp/simsearch-bench), `simsearch serve` is
started on a free 127.0.0.1 port (rate limit off), and at each concurrency wrk (1 thread) runs, one
after another: GET /healthz (the reference), POST /search?k=10 with 32x32 PNG queries (CIFAR-10
test images), POST /search?k=10 with 640x480 JPEG photos (as multipart; the kinds png32raw and
jpeg640raw send the same images as the body itself; heic640 and avif640 are those photos as HEIC
and AVIF; a kind with `-batchN`, e.g. png32-batch32, sends N images in each request to POST
/batch/search?k=10, and its ratio is images/s against /healthz's requests/s). Reported: requests/s, p50/p99 latency,
the ratio to /healthz at the same concurrency, the service's own mean embed batch size and
decode/embed/search times (from /metrics), and the server's resident memory.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402


def query_files(workdir: Path) -> dict[str, tuple[str, list[Path]]]:
    qdir = workdir / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    out = {"png32": ("image/png", []), "jpeg640": ("image/jpeg", [])}
    for i, data in enumerate(_common.png_32(32)):
        p = qdir / f"q{i:02d}.png"
        p.write_bytes(data)
        out["png32"][1].append(p)
    for i, data in enumerate(_common.photo_640x480()):
        p = qdir / f"photo{i}.jpg"
        p.write_bytes(data)
        out["jpeg640"][1].append(p)
    out["png32raw"], out["jpeg640raw"] = out["png32"], out["jpeg640"]
    # the same photos as phones write them (HEIC with its embedded thumbnail, AVIF)
    for kind, fmt, mime in (("heic640", "HEIF", "image/heic"), ("avif640", "AVIF", "image/avif")):
        out[kind] = (mime, [])
        for i, data in enumerate(_common.reencode(_common.photo_640x480(), fmt)):
            p = qdir / f"photo{i}.{kind[:4]}"
            p.write_bytes(data)
            out[kind][1].append(p)
    return out


def _route(kind: str, queries: dict) -> tuple[str, int, tuple[str, list[Path]]]:
    """The path, images per request and query files of a kind: `png32` one image to /search,
    `png32-batch32` 32 images a request to /batch/search."""
    base, _, per = kind.partition("-batch")
    if per:
        return "/batch/search?k=10", int(per), queries[base]
    return "/search?k=10", 1, queries[kind]


def cpu_per_request(after: dict[str, float], before: dict[str, float], requests: int, pid: int) -> dict:
    """The server's CPU milliseconds per request over one run, in total and per thread (the main thread,
    which runs the event loop, then the busiest others): less sensitive to the other load on the
    machine than requests/s."""
    n = max(requests, 1)
    per = {("main" if k == f"tid{pid}" else k): round(1e3 * (v - before.get(k, 0.0)) / n, 3)
           for k, v in after.items() if k != "total" and v - before.get(k, 0.0) > 0}
    return {"server_cpu_ms_per_request": 1e3 * (after["total"] - before.get("total", 0.0)) / n,
            "server_cpu_ms_per_request_by_thread": dict(sorted(per.items(), key=lambda kv: (kv[0] != "main", -kv[1])))}


def _threads_text(r: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in list(r["server_cpu_ms_per_request_by_thread"].items())[:4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8.0, help="wrk duration per case")
    ap.add_argument("--kinds", default="png32,jpeg640", help="png32, jpeg640, heic640, avif640 (multipart), png32raw, "
                                                             "jpeg640raw (the body); KIND-batchN: N images a request "
                                                             "to /batch/search")
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V",
                    help="extra environment for the server (e.g. OMP_NUM_THREADS=1)")
    ap.add_argument("--variant", help="run the server with bench/variants/NAME/sitecustomize.py on PYTHONPATH "
                                      "(a proposed change patched in for before/after numbers)")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="record a py-spy profile of every /search case")
    ap.add_argument("--tag", default="", help="suffix for the JSON file name (bench_http<tag>.json)")
    args = ap.parse_args()

    import model

    machine = _common.machine()
    workdir = _server.WORK
    workdir.mkdir(parents=True, exist_ok=True)
    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-http-")
    meta = model.read_meta(artifact)
    model_id = model.load_artifact(artifact).model_id
    queries = query_files(workdir)
    kinds = [k for k in args.kinds.split(",") if k]
    env = _common.server_env(args.server_env, args.variant)
    print(f"artifact: {art_kind} ({model_id}); server env: {env or 'default'}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")

    results: dict = {"galleries": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"\n== gallery of {size:,} items")
        data_dir, build_s = _server.build_gallery(size, model_id, meta.embed_dim)
        g: dict = {"build_seconds": build_s or "cached", "runs": {}}
        with _server.Server(data_dir, artifact, env=env) as srv:
            g["ready_seconds"] = srv.wait_ready()
            g["rss_ready_mb"] = srv.rss_bytes() / 2 ** 20
            print(f"server pid {srv.pid} ready in {g['ready_seconds']:.1f} s, RSS {g['rss_ready_mb']:.0f} MiB")
            for kind in kinds:  # warm-up: every code path once, untimed
                path, per, (mime, files) = _route(kind, queries)
                _server.wrk(srv.url, path, 2, 1, files, mime, raw=kind.endswith("raw"), files_per_request=per)
            for conc in [int(c) for c in args.concurrency.split(",")]:
                cpu0 = _server.cpu_seconds(srv.pid)
                ref = _server.wrk(srv.url, "/healthz", conc, args.seconds)
                ref.update(cpu_per_request(_server.cpu_seconds(srv.pid), cpu0, ref["requests"], srv.pid))
                g["runs"][f"healthz_c{conc}"] = ref
                print(f"  c={conc:<3d} {'GET /healthz':26s} {ref['rps']:8.0f} req/s  p50 {ref['p50_ms']:7.2f} ms  "
                      f"p99 {ref['p99_ms']:7.2f} ms  errors {ref['errors']}  server CPU {ref['server_cpu_ms_per_request']:.3f} ms/req")
                for kind in kinds:
                    path, per, (mime, files) = _route(kind, queries)
                    before = srv.metrics()
                    spy = None
                    if args.py_spy:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        spy = _server.py_spy(srv.pid, args.seconds,
                                             args.py_spy / f"http_{size}_{kind}_c{conc}.txt")
                    cpu0 = _server.cpu_seconds(srv.pid)
                    r = _server.wrk(srv.url, path, conc, args.seconds, files, mime, raw=kind.endswith("raw"),
                                    files_per_request=per)
                    r.update(cpu_per_request(_server.cpu_seconds(srv.pid), cpu0, r["requests"] * per, srv.pid))
                    if spy is not None:
                        spy.wait(30)
                    r.update(_server.server_breakdown(srv.metrics(), before))
                    r["images_per_request"], r["images_per_s"] = per, r["ok_rps"] * per
                    r["ratio_to_healthz"] = r["images_per_s"] / ref["rps"] if ref["rps"] else None
                    g["runs"][f"search_{kind}_c{conc}"] = r
                    print(f"  c={conc:<3d} {'POST ' + path.split('?')[0] + ' ' + kind:26s} {r['ok_rps']:8.0f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  "
                          f"= {100 * r['ratio_to_healthz']:.1f}% of /healthz; batch {r.get('mean_embed_batch', 0):.1f}, "
                          f"decode {r.get('mean_decode_ms', 0):.2f} ms, embed {r.get('mean_embed_ms_per_batch', 0):.2f} "
                          f"ms/batch, search {r.get('mean_search_ms_per_call', 0):.2f} ms/call; server CPU "
                          f"{r['server_cpu_ms_per_request']:.3f} ms/image ({_threads_text(r)})"
                          + (f"; {r['images_per_s']:.0f} images/s" if per > 1 else ""))
            g["rss_after_mb"] = srv.rss_bytes() / 2 ** 20
            g["peak_rss_mb"] = _server.peak_rss_bytes(srv.pid) / 2 ** 20
            print(f"server RSS after the runs {g['rss_after_mb']:.0f} MiB (peak {g['peak_rss_mb']:.0f} MiB)")
        results["galleries"][str(size)] = g

    targets = {}
    g10k = results["galleries"].get("10000", {}).get("runs", {})
    if "search_png32_c8" in g10k:
        r = g10k["search_png32_c8"]
        targets["png32_10k_c8_ratio"] = {"value": r["ratio_to_healthz"], "target": ">= 0.5",
                                         "met": r["ratio_to_healthz"] >= 0.5}
        targets["png32_10k_c8_p99_ms"] = {"value": r["p99_ms"], "target": "< 20", "met": r["p99_ms"] < 20}
    for size, g in results["galleries"].items():
        runs = g["runs"]
        if "search_jpeg640_c8" in runs:
            v = runs["search_jpeg640_c8"]["ratio_to_healthz"]
            targets[f"jpeg640_{size}_c8_ratio"] = {"value": v, "target": ">= 0.3", "met": v >= 0.3}
        for kind in kinds:  # the batching target is about single-image requests
            if "-batch" in kind:
                continue
            a, b = runs.get(f"search_{kind}_c8"), runs.get(f"search_{kind}_c32")
            if a and b:
                targets[f"{kind}_{size}_c32_vs_c8"] = {"value": b["ok_rps"] / a["ok_rps"], "target": ">= 1.0",
                                                       "met": b["ok_rps"] >= a["ok_rps"]}
    print("\ntargets:")
    for name, t in targets.items():
        print(f"  {name:28s} {t['value']:8.3f}  (target {t['target']}): {'met' if t['met'] else 'MISSED'}")
    _common.write_result("http" + args.tag, {
        "command": _common.command_line(), "machine": machine, "loadavg_at_end": list(os.getloadavg()),
        "artifact": art_kind, "model_id": model_id, "server_env": env, "variant": args.variant,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "wrk": "wrk 4.x, 1 thread, Lua script bench/wrk_multipart.lua, 127.0.0.1 only",
        "results": results, "targets": targets,
    })


if __name__ == "__main__":
    main()
