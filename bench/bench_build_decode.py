"""`simsearch index build`: each image decoded once for its vector, thumbnail and metadata where one decoding
serves them all (a PNG, WebP, GIF, BMP or AVIF; a JPEG whose drafts for the model and for the thumbnail come
out at the same scale, as CIFAR's 32x32 and a phone's 12 MP), against the build before, which decoded every
image a second time for the thumbnail and metadata (run by hand).

Four folders of real files, each built into a fresh data folder with thumbnails at the default size, by this
checkout's `cli._index._decode` and by a copy of the one before (`decode_twice_before` below, swapped in), in
interleaved rounds (before, after, after, before, ...: which runs first alternates): --cifar CIFAR-10 (JPEG)
test images (32x32) from ../shared/data; --photos 640x480 JPEGs and as many 640x480 PNGs, and --large
4032x3024 JPEGs (12 MP, quality 90), made with Pillow from scikit-learn's two sample photos (bench/_common.py).

Reported: the whole command's images/s and the CPU it took an image (this process's CPU time, all threads:
what decoding once saves, and steadier than the wall clock on a shared machine), median and best of --rounds,
with the median of each round's after / before ratio; and the decoding step alone (`_decode` on one thread
over the folder's files, no model, no store: images/s, interleaved 0.5 s at a time, 2 x --rounds rounds).

    .venv/bin/python bench/bench_build_decode.py [--cifar 2000] [--photos 200] [--large 40] [--rounds 3]
        [--tag _s51]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")   # as `index build` sets it, before torch is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402


def decode_twice_before(data: bytes, embedder, thumb_px: int, exif: bool = False, gps: bool = False):
    """cli/_index.py's _decode as it was before (b368ecb): the model's input from one opening, then the size,
    EXIF and thumbnail from a second (a PNG decoded whole again there, a JPEG at the thumbnail's draft)."""
    from PIL import Image

    import model
    from cli import _galleries as g
    from cli._metadata_file import exif_metadata, gps_metadata

    arr = g.model_input(data, embedder)
    with Image.open(io.BytesIO(data)) as im:
        width, height = model.displayed_size(im)
        meta = {"width": width, "height": height}
        if exif:
            meta.update(exif_metadata(im))
        if gps:
            meta.update(gps_metadata(im))
        thumb = None
        if thumb_px:
            if im.format in model.DRAFT_FORMATS:
                im.draft(None, (thumb_px, thumb_px))
            thumb = model.make_thumbnail(im, thumb_px)
    return arr, thumb, meta


def folders(root: Path, n_cifar: int, n_photos: int, n_large: int) -> dict[str, Path]:
    """The three folders of files, written once: {case: folder} (each image in a class folder of its own)."""
    from PIL import Image

    cases = {f"{n_cifar} CIFAR-10 JPEG 32x32": ("cifar", [(".jpg", d) for d in _common.cifar_test_jpegs(n_cifar)])}
    photos = _common.photo_640x480()
    cases[f"{n_photos} JPEG 640x480"] = ("photos", [(".jpg", photos[i % len(photos)]) for i in range(n_photos)])
    pngs = []
    for data in photos:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    cases[f"{n_photos} PNG 640x480"] = ("pngs", [(".png", pngs[i % len(pngs)]) for i in range(n_photos)])
    large = []
    for data in photos:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((4032, 3024), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        large.append(buf.getvalue())
    cases[f"{n_large} JPEG 4032x3024"] = ("large", [(".jpg", large[i % len(large)]) for i in range(n_large)])
    out = {}
    for case, (name, files) in cases.items():
        for i, (suffix, data) in enumerate(files):
            path = root / name / f"c{i % 10}" / f"{i:05d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out[case] = root / name
    return out


def build_seconds(folder: Path, data: Path, artifact: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `simsearch index build FOLDER` into the fresh `data`,
    its output swallowed."""
    from cli import main

    sink = io.StringIO()
    t0, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["index", "build", str(folder), "--model", str(artifact), "--data", str(data)])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if code != 0:
        raise SystemExit(f"index build {folder} exited {code}:\n{sink.getvalue()[-2000:]}")
    return seconds, cpu


def decode_case(decode, files: list[bytes], embedder, thumb_px: int):
    """One pass of `decode` over `files` on this thread, as a case of _common.interleaved."""
    def run() -> int:
        for data in files:
            decode(data, embedder, thumb_px)
        return len(files)
    return run


def _summary(values: list[float], best=max) -> dict:
    return {"median": round(statistics.median(values), 2), "best": round(best(values), 2),
            "rounds": [round(v, 2) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 test JPEGs in the first folder (2000)")
    ap.add_argument("--photos", type=int, default=200, help="640x480 JPEGs, and as many PNGs (200)")
    ap.add_argument("--large", type=int, default=40, help="4032x3024 JPEGs (40)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import model
    from cli import _galleries as g, _index

    variants = {"decode once (this checkout)": _index._decode, "decode twice (before)": decode_twice_before}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact, artifact_kind = _common.default_or_seeded_artifact(root)
        cases = folders(root / "images", args.cifar, args.photos, args.large)
        result = {"command": _common.command_line(), "machine": _common.machine(), "artifact": artifact_kind,
                  "workers": min(8, os.cpu_count() or 1), "thumbnail_px": g.THUMB_PX}
        build = {(v, c): [] for c in cases for v in variants}
        cpu_ms = {(v, c): [] for c in cases for v in variants}
        embedder = model.Embedder.from_file(artifact, device="cpu")
        files = {c: [p.read_bytes() for p in sorted(folder.rglob("*.*"))] for c, folder in cases.items()}
        runs = 0
        try:
            for r in range(args.rounds + 1):   # round 0 warms up (model, imports, page cache) and is not kept
                for case, folder in cases.items():
                    # which runs first alternates round by round: the first of a pair came out slower here
                    for name, fn in list(variants.items())[::1 if r % 2 else -1]:
                        _index._decode = fn
                        runs += 1
                        seconds, cpu = build_seconds(folder, root / f"data{runs}", artifact)
                        if r:
                            build[name, case].append(len(files[case]) / seconds)
                            cpu_ms[name, case].append(1e3 * cpu / len(files[case]))
        finally:
            _index._decode = variants["decode once (this checkout)"]
        decode = {}
        for case in cases:
            rates = _common.interleaved({name: decode_case(fn, files[case], embedder, g.THUMB_PX)
                                         for name, fn in variants.items()}, rounds=2 * args.rounds, seconds=0.5,
                                        warmup=1)
            decode.update({(name, case): rates[name]["rounds"] for name in variants})
    result["cases"] = {f"{name} | {case}": {"build_images_per_s": _summary(build[name, case]),
                                            "build_cpu_ms_per_image": _summary(cpu_ms[name, case], min),
                                            "decode_step_images_per_s_one_thread": _summary(decode[name, case])}
                       for name, case in build}
    print(f"{'build':28} {'folder':24} {'img/s median':>12} {'best':>7} {'CPU ms/img':>10} {'_decode img/s':>13}")
    for (name, case), values in build.items():
        print(f"{name:28} {case:24} {statistics.median(values):12.1f} {max(values):7.1f} "
              f"{statistics.median(cpu_ms[name, case]):10.3f} {statistics.median(decode[name, case]):13.1f}")
    after, before = variants
    for case in cases:
        # each round's pair ran back to back: their ratio is steadier than the ratio of medians
        paired = {what: round(statistics.median(a / b for a, b in zip(got[after, case], got[before, case],
                                                                     strict=True)), 2)
                  for what, got in (("build_images_per_s", build), ("decode_step_images_per_s", decode))}
        paired["build_cpu_per_image_before_over_after"] = round(statistics.median(
            b / a for a, b in zip(cpu_ms[after, case], cpu_ms[before, case], strict=True)), 2)
        result.setdefault("after_over_before_paired_median", {})[case] = paired
        print(f"{case}, median of the rounds' ratios: build images/s after / before "
              f"{paired['build_images_per_s']:.2f}, build CPU an image before / after "
              f"{paired['build_cpu_per_image_before_over_after']:.2f}, "
              f"decode step images/s after / before {paired['decode_step_images_per_s']:.2f}")
    _common.write_result("build_decode" + args.tag, result)


if __name__ == "__main__":
    main()
