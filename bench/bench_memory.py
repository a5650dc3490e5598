"""Resident memory of the serving process with an empty, a 10,000-item and a 1,000,000-item gallery.

    .venv/bin/python bench/bench_memory.py [--sizes 0,10000,1000000] [--seconds 3]

Each gallery is random unit vectors put in through index.Store (cached, see bench/_server.py);
`simsearch serve` is started on it and VmRSS is read from /proc/PID/status once /readyz answers and
again after a short /search load (wrk, 32x32 PNG queries, concurrency 8), with VmHWM as the peak.
The reference is the raw size of the vectors (items x dim x 4 bytes) over the empty server's RSS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402
from bench_http import query_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,10000,1000000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--artifact", type=Path)
    args = ap.parse_args()
    import model

    machine = _common.machine()
    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-mem-")
    meta = model.read_meta(artifact)
    model_id = model.load_artifact(artifact).model_id
    mime, files = query_files(_server.WORK)["png32"]
    res: dict = {}
    base = None
    for size in [int(s) for s in args.sizes.split(",")]:
        if size == 0:
            data_dir = Path(tempfile.mkdtemp(prefix="bench-mem-empty-"))
        else:
            data_dir, _ = _server.build_gallery(size, model_id, meta.embed_dim)
        with _server.Server(data_dir, artifact) as srv:
            ready_s = srv.wait_ready()
            rss_ready = srv.rss_bytes()
            load = _server.wrk(srv.url, "/search?k=10", 8, args.seconds, files, mime)
            rss_after = srv.rss_bytes()
            peak = _server.peak_rss_bytes(srv.pid)
        vectors = size * meta.embed_dim * 4
        r = {"items": size, "ready_seconds": ready_s, "rss_ready_mib": rss_ready / 2 ** 20,
             "rss_after_search_mib": rss_after / 2 ** 20, "peak_rss_mib": peak / 2 ** 20,
             "raw_vectors_mib": vectors / 2 ** 20, "search_rps_during": load["ok_rps"]}
        if size == 0:
            base = rss_after
        elif base is not None:
            r["bytes_per_item_over_empty"] = (rss_after - base) / size
            r["ratio_to_raw_vectors"] = (rss_after - base) / vectors
        res[str(size)] = r
        extra = (f"; {r['bytes_per_item_over_empty']:.0f} bytes/item over the empty server "
                 f"({r['ratio_to_raw_vectors']:.2f}x the raw vectors)") if "ratio_to_raw_vectors" in r else ""
        print(f"{size:>9,} items: ready in {ready_s:.1f} s, RSS {r['rss_ready_mib']:.0f} MiB ready, "
              f"{r['rss_after_search_mib']:.0f} MiB after /search load, peak {r['peak_rss_mib']:.0f} MiB{extra}")
    _common.write_result("memory", {"command": _common.command_line(), "machine": machine,
                                    "loadavg_at_end": list(os.getloadavg()), "artifact": art_kind,
                                    "model_id": model_id, "results": res})


if __name__ == "__main__":
    main()
