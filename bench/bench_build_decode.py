"""`simsearch index build`: each image decoded once for its vector, thumbnail and metadata where one decoding
serves them all (a PNG, WebP, GIF, BMP or AVIF; a JPEG whose draft for the model and for the thumbnail come out at
the same scale, as CIFAR's 32x32), against the build before, which decoded every image a second time for the
thumbnail and metadata (run by hand).

Three folders of real files, each built into a fresh data folder with thumbnails at the default size, by this
checkout's `cli._index._decode` and by a copy of the one before (`decode_twice_before` below, swapped in), in
interleaved rounds (after, before, after, before, ...): --cifar CIFAR-10 (JPEG) test images (32x32) from
../shared/data, --photos 640x480 JPEGs and as many 640x480 PNGs, made with Pillow from scikit-learn's two
sample photos (bench/_common.py). Reported: the whole command's images/s (median and best of --rounds), and
the decoding step alone (`_decode` on one thread over the folder's files, no model, no store), images/s.

    .venv/bin/python bench/bench_build_decode.py [--cifar 2000] [--photos 200] [--rounds 3] [--tag _s51]
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


def folders(root: Path, n_cifar: int, n_photos: int) -> dict[str, Path]:
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
    out = {}
    for case, (name, files) in cases.items():
        for i, (suffix, data) in enumerate(files):
            path = root / name / f"c{i % 10}" / f"{i:05d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out[case] = root / name
    return out


def build_seconds(folder: Path, data: Path, artifact: Path) -> float:
    """Wall seconds of one `simsearch index build FOLDER` into the fresh `data`, its output swallowed."""
    from cli import main

    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["index", "build", str(folder), "--model", str(artifact), "--data", str(data)])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"index build {folder} exited {code}:\n{sink.getvalue()[-2000:]}")
    return seconds


def decode_rate(decode, files: list[bytes], embedder, thumb_px: int) -> float:
    """Images/s of `decode` alone over `files`, on this thread."""
    t0 = time.perf_counter()
    for data in files:
        decode(data, embedder, thumb_px)
    return len(files) / (time.perf_counter() - t0)


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "best": round(max(values), 1),
            "rounds": [round(v, 1) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 test JPEGs in the first folder (2000)")
    ap.add_argument("--photos", type=int, default=200, help="640x480 JPEGs, and as many PNGs (200)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import model
    from cli import _galleries as g, _index

    variants = {"decode once (this checkout)": _index._decode, "decode twice (before)": decode_twice_before}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact, artifact_kind = _common.default_or_seeded_artifact(root)
        cases = folders(root / "images", args.cifar, args.photos)
        result = {"command": _common.command_line(), "machine": _common.machine(), "artifact": artifact_kind,
                  "workers": min(8, os.cpu_count() or 1), "thumbnail_px": g.THUMB_PX}
        build = {(v, c): [] for c in cases for v in variants}
        decode = {(v, c): [] for c in cases for v in variants}
        embedder = model.Embedder.from_file(artifact, device="cpu")
        files = {c: [p.read_bytes() for p in sorted(folder.rglob("*.*"))] for c, folder in cases.items()}
        runs = 0
        try:
            for r in range(args.rounds + 1):   # round 0 warms up (model, imports, page cache) and is not kept
                for case, folder in cases.items():
                    for name, fn in variants.items():
                        _index._decode = fn
                        runs += 1
                        seconds = build_seconds(folder, root / f"data{runs}", artifact)
                        rate = decode_rate(fn, files[case], embedder, g.THUMB_PX)
                        if r:
                            build[name, case].append(len(files[case]) / seconds)
                            decode[name, case].append(rate)
        finally:
            _index._decode = variants["decode once (this checkout)"]
    result["cases"] = {f"{name} | {case}": {"build_images_per_s": _summary(build[name, case]),
                                            "decode_step_images_per_s_one_thread": _summary(decode[name, case])}
                       for name, case in build}
    print(f"{'build':28} {'folder':24} {'build img/s median':>18} {'best':>7} {'_decode img/s (1 thread)':>24}")
    for (name, case), values in build.items():
        print(f"{name:28} {case:24} {statistics.median(values):18.1f} {max(values):7.1f} "
              f"{statistics.median(decode[name, case]):24.1f}")
    for case in cases:
        once, twice = (statistics.median(build[name, case]) for name in variants)
        d_once, d_twice = (statistics.median(decode[name, case]) for name in variants)
        result.setdefault("after_over_before", {})[case] = {"build": round(once / twice, 2),
                                                            "decode_step": round(d_once / d_twice, 2)}
        print(f"{case}: after / before images/s: build {once / twice:.2f}, decode step {d_once / d_twice:.2f}")
    _common.write_result("build_decode" + args.tag, result)


if __name__ == "__main__":
    main()
