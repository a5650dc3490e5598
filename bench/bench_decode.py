"""Image decoding + resize per query, for the two query kinds, with and without JPEG draft mode.

    .venv/bin/python bench/bench_decode.py [--rounds 5] [--seconds 0.4] [--tag _s22]

Query kinds: 32x32 PNG (CIFAR-10 test images re-encoded as PNG) and 640x480 JPEG photos (the two
photos bundled with scikit-learn, fitted to 640x480, quality 90). Cases, interleaved in one run:
- decode only (PIL Image.open + load, full size);
- decode + model.to_model_array as the service does it (for JPEG it asks libjpeg for a draft, i.e.
  decoding at 1/2, 1/4 or 1/8 scale in the DCT domain, never below the model's 32x32), on an image it
  opened itself (owned=True: drafted in place);
- the same on a caller's image (owned=False, Embedder.embed given PIL images): drafted from a second
  opening of its data, which leaves the caller's image whole;
- the same with draft mode defeated (the image is fully loaded first, so draft() is a no-op);
- for JPEG, simplejpeg (libjpeg-turbo, when installed) decoding at reduced scale, then the same
  resize + crop, as another well-kept decoder;
- the same photos as HEIC (quality 90, with a 320-pixel embedded thumbnail, the size iPhones embed),
  decoded as the service does it (pillow-heif's draft picks the thumbnail) and at full size, and as
  AVIF (quality 90, Pillow's own decoder, which has no reduced-scale path).
Also reports how far the draft output is from the full-decode output (mean |pixel difference|).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402


def _cycle(items):
    i = 0
    while True:
        yield items[i % len(items)]
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4)
    ap.add_argument("--tag", default="", help="suffix of the result file: bench_decode<TAG>.json")
    args = ap.parse_args()
    machine = _common.machine()
    size, chans = 32, 3

    pngs, jpegs = _common.png_32(64), _common.photo_640x480()
    heics, avifs = _common.reencode(jpegs, "HEIF"), _common.reencode(jpegs, "AVIF")
    print(f"inputs: {len(pngs)} PNG 32x32 (mean {np.mean([len(b) for b in pngs]):.0f} bytes), "
          f"{len(jpegs)} JPEG 640x480 (mean {np.mean([len(b) for b in jpegs]) / 1024:.0f} KiB)")

    def decode_only(src):
        it = _cycle(src)
        return lambda: (Image.open(io.BytesIO(next(it))).load(), 1)[1]

    def current(src, owned=True):
        it = _cycle(src)
        return lambda: (model.to_model_array(Image.open(io.BytesIO(next(it))), chans, size, owned=owned), 1)[1]

    def no_draft(src):
        it = _cycle(src)

        def fn():
            im = Image.open(io.BytesIO(next(it)))
            im.load()  # a loaded image ignores draft(): the full-size decode path
            model.to_model_array(im, chans, size)
            return 1
        return fn

    cases = {
        "png32_decode_only": decode_only(pngs),
        "png32_decode_preprocess": current(pngs),
        "jpeg640_decode_only_full": decode_only(jpegs),
        "jpeg640_decode_preprocess_no_draft": no_draft(jpegs),
        "jpeg640_decode_preprocess_draft": current(jpegs),
        "jpeg640_decode_preprocess_draft_second_opening": current(jpegs, owned=False),
        "heic640_decode_preprocess_no_draft": no_draft(heics),
        "heic640_decode_preprocess_thumbnail": current(heics),
        "avif640_decode_preprocess": current(avifs),
    }
    try:
        import simplejpeg

        it_sj = _cycle(jpegs)

        def sj():
            arr = simplejpeg.decode_jpeg(next(it_sj), colorspace="RGB", fastdct=True, fastupsample=True,
                                         min_height=size, min_width=size)
            model.to_model_array(Image.fromarray(arr), chans, size)
            return 1
        cases["jpeg640_simplejpeg_scaled_preprocess"] = sj
        sj_version = simplejpeg.__version__
    except ImportError:
        sj_version = None

    r = _common.interleaved(cases, rounds=args.rounds, seconds=args.seconds)
    for v in r.values():
        v["us_per_image_median"] = 1e6 / v["median"]

    def draft_diffs(blobs):
        """What draft (or the HEIC thumbnail) changes in the pixels the model sees, per image."""
        out = []
        for b in blobs:
            full = Image.open(io.BytesIO(b))
            full.load()
            a = model.to_model_array(full, chans, size).astype(np.int16)
            d = model.to_model_array(Image.open(io.BytesIO(b)), chans, size).astype(np.int16)
            out.append(float(np.abs(a - d).mean()))
        return out

    diffs, heic_diffs = draft_diffs(jpegs), draft_diffs(heics)
    draft_scale = Image.open(io.BytesIO(jpegs[0]))
    draft_scale.draft("RGB", (size, size))
    ratios = {
        "draft_speedup_vs_no_draft": r["jpeg640_decode_preprocess_no_draft"]["median"]
        and r["jpeg640_decode_preprocess_draft"]["median"] / r["jpeg640_decode_preprocess_no_draft"]["median"],
        "heic_thumbnail_speedup_vs_full": r["heic640_decode_preprocess_thumbnail"]["median"]
        / r["heic640_decode_preprocess_no_draft"]["median"],
        "jpeg_draft_vs_heic_thumbnail": r["jpeg640_decode_preprocess_draft"]["median"]
        / r["heic640_decode_preprocess_thumbnail"]["median"],
        "jpeg_draft_vs_avif": r["jpeg640_decode_preprocess_draft"]["median"] / r["avif640_decode_preprocess"]["median"],
        "jpeg_second_opening_vs_in_place": r["jpeg640_decode_preprocess_draft_second_opening"]["median"]
        / r["jpeg640_decode_preprocess_draft"]["median"],
    }
    if sj_version:
        ratios["simplejpeg_speedup_vs_pil_draft"] = (r["jpeg640_simplejpeg_scaled_preprocess"]["median"]
                                                    / r["jpeg640_decode_preprocess_draft"]["median"])
    print(f"{'case':40s} {'images/s':>10s} {'best':>10s} {'us/image':>9s}")
    for name, v in r.items():
        print(f"{name:40s} {v['median']:10.0f} {v['best']:10.0f} {v['us_per_image_median']:9.1f}")
    print(f"draft decodes the 640x480 JPEG at {draft_scale.size[0]}x{draft_scale.size[1]}; "
          f"{ratios['draft_speedup_vs_no_draft']:.1f}x faster than full decode + resize; "
          f"mean |pixel diff| of the 32x32 result vs full decode: {np.mean(diffs):.2f} / 255")
    print(f"HEIC from its 320-pixel thumbnail: {ratios['heic_thumbnail_speedup_vs_full']:.1f}x faster than the "
          f"full decode; mean |pixel diff| of the 32x32 result: {np.mean(heic_diffs):.2f} / 255; JPEG with draft is "
          f"{ratios['jpeg_draft_vs_heic_thumbnail']:.1f}x the HEIC thumbnail's rate, {ratios['jpeg_draft_vs_avif']:.1f}x AVIF's")
    print(f"a caller's JPEG (drafted from a second opening, owned=False) at "
          f"{ratios['jpeg_second_opening_vs_in_place']:.3f}x the rate of one drafted in place (owned=True)")
    if sj_version:
        print(f"simplejpeg {sj_version} scaled decode: {ratios['simplejpeg_speedup_vs_pil_draft']:.2f}x PIL draft")
    _common.write_result(f"decode{args.tag}", {
        "command": _common.command_line(), "machine": machine, "simplejpeg": sj_version,
        "inputs": {"png32": {"count": len(pngs), "mean_bytes": float(np.mean([len(b) for b in pngs]))},
                   "jpeg640x480": {"count": len(jpegs), "mean_bytes": float(np.mean([len(b) for b in jpegs])),
                                   "quality": 90, "draft_decode_size": list(draft_scale.size)},
                   "heic640x480": {"count": len(heics), "mean_bytes": float(np.mean([len(b) for b in heics])),
                                   "quality": 90, "thumbnail": 320},
                   "avif640x480": {"count": len(avifs), "mean_bytes": float(np.mean([len(b) for b in avifs])),
                                   "quality": 90}},
        "results": r, "ratios": ratios, "draft_mean_abs_pixel_diff": float(np.mean(diffs)),
        "heic_thumbnail_mean_abs_pixel_diff": float(np.mean(heic_diffs)),
    })


if __name__ == "__main__":
    main()
