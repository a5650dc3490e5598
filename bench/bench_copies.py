"""Edited copies: does a search with an edited copy of a gallery image find that image, and can one
distance tell copies from other images? What users try first with their own photos.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_copies.py [ARTIFACT ...] [--originals 2000]
        [--every 10] [--tag _NAME]

The gallery: the first --originals CIFAR-10 (JPEG) test images (distinct photos of ten classes).
The queries: every --every-th of them, edited the ways copies of a photo differ: re-encoded at JPEG
quality 30, enlarged 8x (a photo re-exported at another size: the model shrinks it back), cropped
to the central 28x28 and enlarged back, 20% brighter, mirrored, rotated 5 degrees. For each
artifact (default: the bundled CIFAR-10 models) and edit: how often the original is the first
hit and among the first five (a flat, exact search of the originals), and the distance from each
copy to its original. The reference, in the same run: the distance from each original to its
nearest other original, which a distance threshold for "a copy" would have to stay below.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DEFAULT_ARTIFACTS = ("model/weights/hybrid1-cifar10.safetensors", "model/weights/hybrid1-res-cifar10.safetensors",
                     "model/weights/hybrid1-res-s1-cifar10.safetensors")
PERCENTILES = (5, 50, 95)


def edits():
    from PIL import Image, ImageEnhance

    def jpeg(im, quality):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))

    return {
        "jpeg q30": lambda im: jpeg(im, 30),
        "enlarged 8x": lambda im: jpeg(im.resize((im.width * 8, im.height * 8), Image.BICUBIC), 90),
        "crop 28/32": lambda im: im.crop((2, 2, im.width - 2, im.height - 2)).resize(im.size, Image.BICUBIC),
        "brighter 20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
        "mirrored": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
        "rotated 5 deg": lambda im: im.rotate(5, resample=Image.BICUBIC),
    }


def study(artifact: str, originals: list, every: int) -> dict:
    import faiss

    import model

    embedder = model.Embedder.from_file(artifact, device="cpu")
    t0 = time.perf_counter()
    gallery = embedder.embed(originals)
    index = faiss.IndexFlatIP(embedder.dim)
    index.add(gallery)
    sims, nn = index.search(gallery, 2)  # the first is the image itself
    nearest_other = np.sqrt(np.maximum(0, 2 - 2 * sims[:, 1]))
    chosen = np.arange(0, len(originals), every)
    out = {"artifact": artifact, "model": embedder.model_id, "tta": embedder.meta.tta,
           "original_to_nearest_other_original": _percentiles(nearest_other), "edits": {}}
    print(f"{embedder.model_id}: nearest other original at distance "
          + " / ".join(f"{v:.3f}" for v in out["original_to_nearest_other_original"].values())
          + f" (percentiles {PERCENTILES})", flush=True)
    for name, edit in edits().items():
        queries = embedder.embed([edit(originals[i]) for i in chosen])
        scores, hits = index.search(queries, 5)
        to_original = np.sqrt(np.maximum(0, 2 - 2 * (queries * gallery[chosen]).sum(1)))
        top1 = float(np.mean(hits[:, 0] == chosen))
        top5 = float(np.mean((hits == chosen[:, None]).any(1)))
        below = float(np.mean(to_original < np.percentile(nearest_other, 5)))
        out["edits"][name] = {"queries": len(chosen), "original_first": top1, "original_in_top5": top5,
                              "copy_to_original": _percentiles(to_original),
                              "share_below_the_5th_percentile_of_nearest_other": below}
        print(f"  {name:14s} original first {top1:.3f}, in the top 5 {top5:.3f}; distance to it "
              + " / ".join(f"{v:.3f}" for v in out["edits"][name]["copy_to_original"].values())
              + f"; below 5 % of originals' nearest other: {below:.2f}", flush=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def _percentiles(x: np.ndarray) -> dict:
    return {str(p): float(np.percentile(x, p)) for p in PERCENTILES}


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*", default=list(DEFAULT_ARTIFACTS))
    ap.add_argument("--originals", type=int, default=2000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    originals = [Image.open(io.BytesIO(b)).convert("RGB") for b in _common.cifar_test_jpegs(args.originals)]
    runs = [study(a, originals, args.every) for a in args.artifacts]
    _common.write_result("copies" + args.tag, {"command": _common.command_line(), "machine": _common.machine(),
                                                "originals": len(originals), "runs": runs})


if __name__ == "__main__":
    main()
