"""Does one client's slow-to-decode image hold up everyone else's searches? (run by hand)

One client sends small queries (32x32 PNGs, CIFAR-10 test images) to POST /search one after another for
`--seconds`; meanwhile, in the second phase, another client sends an 8000x8000 RGBA PNG (a 346 KB file of
64 million pixels, within the default pixel limit) to POST /search over and over. The small queries'
latency (p50, p99, max) alone and beside it, and the big ones' count and latency, from one server with a
10,000-item gallery. `--variant no_slow_decode_lane` serves every query image through the micro-batcher,
as before such images were decoded apart (bench/variants/), for the before/after.

    .venv/bin/python bench/bench_slow_decode.py [--seconds 20] [--variant no_slow_decode_lane] [--tag _s45]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402


def big_png() -> bytes:
    """8000x8000 RGBA: sparse dots on half-transparent black, which PNG compresses to about 346 KB."""
    import numpy as np
    from PIL import Image

    a = np.zeros((8000, 8000, 4), np.uint8)
    a[::7, ::5] = 200
    a[..., 3] = 128
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def _stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    q = sorted(ms)
    return {"n": len(ms), "p50_ms": round(statistics.median(q), 1),
            "p99_ms": round(q[min(len(q) - 1, int(0.99 * len(q)))], 1), "max_ms": round(q[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--variant", default=None, help="a folder of bench/variants/ whose sitecustomize the server runs")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        artifact, artifact_kind = _common.default_or_seeded_artifact(Path(tmp))
        import model

        loaded = model.load_artifact(artifact)
        data_dir, _ = _server.build_gallery(10_000, loaded.model_id, loaded.meta.embed_dim)
        small, big = _common.png_32(64), big_png()
        result = {"command": _common.command_line(), "machine": _common.machine(), "server_env": args.server_env,
                  "variant": args.variant,
                  "artifact": artifact_kind,
                  "big_png_bytes": len(big)}
        with _server.Server(data_dir, artifact, env=_common.server_env(args.server_env, args.variant)) as server:
            server.wait_ready()
            url = server.url + "/search?k=10"

            def small_queries(seconds: float) -> list[float]:
                out, end = [], time.perf_counter() + seconds
                with httpx.Client(timeout=120) as c:
                    i = 0
                    while time.perf_counter() < end:
                        t0 = time.perf_counter()
                        r = c.post(url, files={"file": ("q.png", small[i % len(small)], "image/png")})
                        out.append((time.perf_counter() - t0) * 1000)
                        assert r.status_code == 200, r.text
                        i += 1
                return out

            small_queries(3)   # warm
            result["small alone"] = _stats(small_queries(args.seconds))
            big_ms: list[float] = []
            stop = threading.Event()

            def big_queries() -> None:
                with httpx.Client(timeout=120) as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        r = c.post(url, files={"file": ("big.png", big, "image/png")})
                        big_ms.append((time.perf_counter() - t0) * 1000)
                        assert r.status_code == 200, r.text

            sender = threading.Thread(target=big_queries)
            sender.start()
            time.sleep(0.5)
            result["small beside big"] = _stats(small_queries(args.seconds))
            stop.set()
            sender.join()
            result["big"] = _stats(big_ms)
            result["server_metrics"] = {k: v for k, v in server.metrics().items() if "slow_decode" in k}
        for key in ("small alone", "small beside big", "big"):
            print(f"{key}: {result[key]}", flush=True)
        _common.write_result("slow_decode" + args.tag, result)


if __name__ == "__main__":
    main()
