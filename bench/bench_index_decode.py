"""The server's CPU for one POST /index of images: each image decoded once for its vector and thumbnail where it
decodes whole (PNG, WebP, GIF, BMP, AVIF), against decoding it a second time for the thumbnail as before (run by
hand; h1 F5).

Two servers side by side, each into an empty gallery with thumbnails at the default size: this checkout, and
the same with `bench/variants/index_decode_twice` (the thumbnail from a second decoding, as before). The cases,
interleaved round by round (A, B, A, B, ...): 32 photos of 640x480 (JPEG) in one request, and 8 PNGs of
4000x3000 (12 MP each, 96 MP in all) in one request. The server's CPU seconds a request (/proc/PID/stat) and the
wall time, median and best of --rounds. Last, on this checkout, the 60 PNGs of 49 MP of the report (a 9 MB
request that took 110 s of CPU): refused (413) from their headers.

    .venv/bin/python bench/bench_index_decode.py [--rounds 5] [--tag _s50]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402


def large_pngs(n: int = 8, size: tuple[int, int] = (4000, 3000)) -> list[bytes]:
    """n PNGs of size: a small random picture enlarged (blocks of 20 px, as flat areas of a screenshot compress),
    about 0.2 MB each, so that 8 fit the default 10 MiB body."""
    import numpy as np
    from PIL import Image

    out = []
    for seed in range(n):
        small = np.random.default_rng(seed).integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize(size, Image.Resampling.NEAREST).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def solid_png(side: int = 7000) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def post(client, server: _server.Server, files: list[tuple[str, bytes]]) -> tuple[int, float, float]:
    """(status, server CPU seconds, wall seconds) of one POST /index of `files`."""
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    cpu0, t0 = _server.cpu_seconds(server.pid)["total"], time.perf_counter()
    r = client.post(server.url + "/index", files=parts)
    wall = time.perf_counter() - t0
    return r.status_code, _server.cpu_seconds(server.pid)["total"] - cpu0, wall


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "best": round(min(values), 3),
            "rounds": [round(v, 3) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import httpx

    photos = _common.photo_640x480()
    cases = {"32 JPEG 640x480": [(f"p{i}.jpg", photos[i % len(photos)]) for i in range(32)],
             "8 PNG 4000x3000": [(f"b{i}.png", data) for i, data in enumerate(large_pngs())]}
    variants = {"decode once (this checkout)": None, "decode twice (before)": "index_decode_twice"}
    with tempfile.TemporaryDirectory() as tmp:
        artifact, artifact_kind = _common.default_or_seeded_artifact(Path(tmp))
        result = {"command": _common.command_line(), "machine": _common.machine(), "artifact": artifact_kind,
                  "request_bytes": {k: sum(len(d) for _, d in v) for k, v in cases.items()}}
        servers = {name: _server.Server(Path(tmp) / f"data{i}", artifact, env=_common.server_env([], variant))
                   for i, (name, variant) in enumerate(variants.items())}
        try:
            for server in servers.values():
                server.wait_ready()
            cpu = {(s, c): [] for s in servers for c in cases}
            wall = {(s, c): [] for s in servers for c in cases}
            with httpx.Client(timeout=600) as client:
                for name, server in servers.items():   # warm-up: the model, the gallery made, first thumbnails
                    for files in cases.values():
                        assert post(client, server, files)[0] == 201
                for _ in range(args.rounds):
                    for case, files in cases.items():
                        for name, server in servers.items():
                            status, seconds, elapsed = post(client, server, files)
                            assert status == 201, status
                            cpu[name, case].append(seconds)
                            wall[name, case].append(elapsed)
                big = [(f"s{i}.png", solid_png()) for i in range(60)]
                status, seconds, elapsed = post(client, servers["decode once (this checkout)"], big)
                result["60 PNG 7000x7000 (h1 F5)"] = {"status": status, "server_cpu_s": round(seconds, 3),
                                                      "wall_s": round(elapsed, 3),
                                                      "request_bytes": sum(len(d) for _, d in big)}
        finally:
            for server in servers.values():
                server.stop()
    result["cases"] = {f"{name} | {case}": {"server_cpu_s": _summary(cpu[name, case]),
                                            "wall_s": _summary(wall[name, case])} for name, case in cpu}
    print(f"{'server':30} {'request':18} {'CPU s median':>12} {'best':>7} {'wall s median':>13}")
    for (name, case), values in cpu.items():
        print(f"{name:30} {case:18} {statistics.median(values):12.3f} {min(values):7.3f} "
              f"{statistics.median(wall[name, case]):13.3f}")
    for case in cases:
        once, twice = (statistics.median(cpu[name, case]) for name in variants)
        result.setdefault("cpu_ratio_before_over_after", {})[case] = round(twice / once, 2)
        print(f"{case}: before / after CPU = {twice / once:.2f}")
    print("60 PNG 7000x7000:", result["60 PNG 7000x7000 (h1 F5)"])
    _common.write_result("index_decode" + args.tag, result)


if __name__ == "__main__":
    main()
