"""The server's CPU for one POST /index of images, each image decoded once for its vector and thumbnail where one
decoding gives both (a PNG, WebP, GIF, BMP or AVIF, decoded whole; a JPEG whose drafts for the model and for the
thumbnail come out at the same scale and mode: CIFAR's 32x32, a phone's 12 MP at 1/8), against the service
before, which decoded every JPEG a second time at the thumbnail's draft scale (run by hand; h1 F5).

Two servers side by side, each into an empty gallery with thumbnails at the default size: this checkout, and
the same with `prepare_before` below (app/_embedding.py's _prepare and _model_input as they were before
34c95f2) swapped in by a sitecustomize written to a temporary folder. The cases, interleaved round by round
(A, B, A, B, ...): 32 CIFAR-10 test JPEGs (32x32), 32 photos of 640x480 (JPEG: two scales either way, the
control), 8 JPEGs of 4032x3024 (12 MP, quality 90, scikit-learn's sample photos enlarged, as
bench_build_decode.py --large), and 8 PNGs of 4000x3000 (decoded once either way since 50th session), one
request each. The server's CPU seconds a request (/proc/PID/stat) and the wall time, median and best of
--rounds. Then the decoding step alone, in this process (_prepare on one thread over each request's files, no
model run, no store: images/s, interleaved 0.5 s at a time, 2 x --rounds rounds). Last, on this checkout, the
60 PNGs of 49 MP of the report (a 9 MB request that took 110 s of CPU): refused (413) from their headers.

    .venv/bin/python bench/bench_index_decode.py [--rounds 5] [--tag _s51] [--json /tmp/out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _server  # noqa: E402

BENCH = Path(__file__).resolve().parent


def prepare_before(service, files: list[tuple[str, bytes]], thumbnail_size: int, crop=None):
    """app/_embedding.py's _prepare as it was before 34c95f2: a JPEG, MPO or HEIC decoded again, from a second
    decode_image, at the thumbnail's draft scale; an image decoded whole decoded once for both."""
    import numpy as np

    from app._embedding import ApiError, decode_image, draft_size, make_thumbnail

    max_pixels, policy = service.settings.max_pixels, service.image_policy
    arrays, thumbs = [], []
    for what, data in files:
        t0 = time.perf_counter()
        array, whole = decode_image(data, max_pixels, what=what, convert=_model_input_before(service, crop,
                                                                                             thumbnail_size),
                                    policy=policy)
        arrays.append(array)
        if thumbnail_size:
            img = whole if whole is not None else decode_image(
                data, max_pixels, draft=draft_size(thumbnail_size, crop), what=what, policy=policy)
            try:
                thumbs.append(make_thumbnail(img, thumbnail_size, crop))
            except Exception as exc:  # noqa: BLE001
                raise ApiError(400, "invalid_image", f"{what}: cannot make a thumbnail: {exc}") from None
        else:
            thumbs.append(None)
        service.metrics.decode_seconds.observe(time.perf_counter() - t0)
    return np.stack(arrays), thumbs


def _model_input_before(service, crop, thumbnail_size: int):
    from model import DRAFT_FORMATS

    def convert(img):
        if thumbnail_size and img.format not in DRAFT_FORMATS:
            img.load()
            return service.embedder.preprocess(img, crop), img
        return service.embedder.preprocess(img, crop, owned=True), None
    return convert


def install_before() -> None:
    """Swap prepare_before in for POST /index (called by the server's sitecustomize)."""
    import app._embedding
    import app._routes_gallery

    app._embedding._prepare = app._routes_gallery._prepare = prepare_before
    sys.stderr.write("bench variant: POST /index as before 34c95f2 (JPEG decoded twice)\n")


def before_env(tmp: Path) -> dict[str, str]:
    """The environment of the server as before: a sitecustomize in `tmp` calling install_before."""
    folder = tmp / "before_site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(BENCH)!r})\n"
                                             "import bench_index_decode\nbench_index_decode.install_before()\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


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


def large_jpegs(photos: list[bytes], n: int = 8) -> list[bytes]:
    """n JPEGs of 4032x3024 (a phone's 12 MP, quality 90): the 640x480 photos enlarged, about 0.7 to 1.3 MB each
    (bench_build_decode.py --large)."""
    from PIL import Image

    large = []
    for data in photos:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((4032, 3024), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        large.append(buf.getvalue())
    return [large[i % len(large)] for i in range(n)]


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


def decode_steps(cases: dict[str, list[tuple[str, bytes]]], artifact: Path, rounds: int) -> dict:
    """{case: {variant: images/s}} of the decoding step alone (_prepare with the default thumbnails) in this
    process, on one thread, the variants interleaved."""
    from types import SimpleNamespace

    import app._embedding
    import model
    from app import Settings
    from app._images import DEFAULT_POLICY

    settings = Settings(model_path=artifact)
    service = SimpleNamespace(settings=settings, image_policy=DEFAULT_POLICY,
                              embedder=model.Embedder.from_file(artifact, device="cpu"),
                              metrics=SimpleNamespace(decode_seconds=SimpleNamespace(observe=lambda s: None)))

    def step(prepare, files):
        def run() -> int:
            prepare(service, files, settings.thumbnail_size)
            return len(files)
        return run

    out = {}
    for case, files in cases.items():
        rates = _common.interleaved({"decode once (this checkout)": step(app._embedding._prepare, files),
                                     "decode twice (before)": step(prepare_before, files)},
                                    rounds=2 * rounds, seconds=0.5, warmup=1)
        out[case] = {name: rates[name]["rounds"] for name in rates}
    return out


def _summary(values: list[float], best=min, digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits), "best": round(best(values), digits),
            "rounds": [round(v, digits) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--json", type=Path, help="write the results here rather than docs/results/")
    args = ap.parse_args()
    import httpx

    photos = _common.photo_640x480()
    cases = {"32 CIFAR-10 JPEG 32x32": [(f"c{i}.jpg", d) for i, d in enumerate(_common.cifar_test_jpegs(32))],
             "32 JPEG 640x480": [(f"p{i}.jpg", photos[i % len(photos)]) for i in range(32)],
             "8 JPEG 4032x3024": [(f"l{i}.jpg", data) for i, data in enumerate(large_jpegs(photos))],
             "8 PNG 4000x3000": [(f"b{i}.png", data) for i, data in enumerate(large_pngs())]}
    once, twice = "decode once (this checkout)", "decode twice (before)"
    with tempfile.TemporaryDirectory() as tmp:
        artifact, artifact_kind = _common.default_or_seeded_artifact(Path(tmp))
        result = {"command": _common.command_line(), "machine": _common.machine(), "artifact": artifact_kind,
                  "request_bytes": {k: sum(len(d) for _, d in v) for k, v in cases.items()}}
        servers = {once: _server.Server(Path(tmp) / "data0", artifact),
                   twice: _server.Server(Path(tmp) / "data1", artifact, env=before_env(Path(tmp)))}
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
                png = solid_png()   # one 49 MP PNG, sent 60 times
                big = [(f"s{i}.png", png) for i in range(60)]
                status, seconds, elapsed = post(client, servers[once], big)
                result["60 PNG 7000x7000 (h1 F5)"] = {"status": status, "server_cpu_s": round(seconds, 3),
                                                      "wall_s": round(elapsed, 3),
                                                      "request_bytes": sum(len(d) for _, d in big)}
        finally:
            for server in servers.values():
                server.stop()
        steps = decode_steps({c: f for c, f in cases.items() if "PNG" not in c}, artifact, args.rounds)
    result["cases"] = {f"{name} | {case}": {"server_cpu_s": _summary(cpu[name, case]),
                                            "wall_s": _summary(wall[name, case])} for name, case in cpu}
    result["decode_step_images_per_s_one_thread"] = {
        f"{name} | {case}": _summary(rates, max, 1) for case, got in steps.items() for name, rates in got.items()}
    print(f"{'server':30} {'request':24} {'CPU s median':>12} {'best':>7} {'wall s median':>13}")
    for (name, case), values in cpu.items():
        print(f"{name:30} {case:24} {statistics.median(values):12.3f} {min(values):7.3f} "
              f"{statistics.median(wall[name, case]):13.3f}")
    for case in cases:
        ratios = {"server_cpu_before_over_after": round(statistics.median(cpu[twice, case])
                                                        / statistics.median(cpu[once, case]), 2)}
        line = f"{case}: server CPU before / after {ratios['server_cpu_before_over_after']:.2f}"
        if case in steps:
            # each round's pair ran back to back: their ratio is steadier than the ratio of medians
            ratios["decode_step_after_over_before_paired_median"] = round(statistics.median(
                a / b for a, b in zip(steps[case][once], steps[case][twice], strict=True)), 2)
            line += (f", decode step images/s {statistics.median(steps[case][once]):.1f} after, "
                     f"{statistics.median(steps[case][twice]):.1f} before: after / before "
                     f"{ratios['decode_step_after_over_before_paired_median']:.2f}")
        result.setdefault("ratios", {})[case] = ratios
        print(line)
    print("60 PNG 7000x7000:", result["60 PNG 7000x7000 (h1 F5)"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    else:
        _common.write_result("index_decode" + args.tag, result)


if __name__ == "__main__":
    main()
