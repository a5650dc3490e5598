"""What searching a region of a photo (`crop=`) gains over searching the whole photo (run by hand).

A user's photo rarely shows one object filling the frame, as a CIFAR-10 image does. This makes such
photos from real data: each query is a CIFAR-10 (JPEG) test image scaled up and pasted at a seeded
random place into a 640x480 scene whose background is another test image, of another class, scaled up
to fill it; the scene is saved as a JPEG (quality 90), as a phone would. The gallery is the first
`--gallery-per-class` training images of each class. Every query is searched three ways, each embedded
exactly as the service embeds an upload (`Embedder.preprocess` on the opened JPEG, with its draft mode):
the object alone (its own test image: the ceiling), the whole scene, and the scene with `crop=` set to
the pasted box (what a user who draws a box on the search page sends); and, to tell what the scaling
costs from what the scene costs, the object scaled up as in the scene and saved alone. Reported per object
size (its side as a share of the scene's height): precision@1 and precision@10 against the gallery's
labels, searched in a FAISS IndexFlatIP.

    .venv/bin/python bench/bench_crop.py [--artifact model/weights/hybrid1-cifar10.safetensors] [--tag _s41]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

import model  # noqa: E402
from bench._common import SHARED_DATA, command_line, machine, write_result  # noqa: E402
from tests.app._browser import cifar10_images  # noqa: E402
from tests.photo_formats import made_up_photo  # noqa: E402

SCENE = (640, 480)


def _scene(obj: bytes, background: bytes, share: float, rng: np.random.Generator) -> tuple[bytes, model.Crop]:
    """A 640x480 JPEG with `obj` pasted, `share` of the height on a side, on `background` scaled up;
    and the pasted box as a crop (fractions)."""
    w, h = SCENE
    side = round(share * h)
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    scene = made_up_photo(background, obj, (x, y, x + side, y + side), SCENE)
    out = io.BytesIO()
    scene.save(out, "JPEG", quality=90)
    return out.getvalue(), (x / w, y / h, (x + side) / w, (y + side) / h)


def _resized(obj: bytes, share: float) -> bytes:
    """The object alone, scaled up and saved as in _scene: what resampling costs, without the scene."""
    side = round(share * SCENE[1])
    out = io.BytesIO()
    image = Image.open(io.BytesIO(obj)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", default=str(REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"))
    ap.add_argument("--gallery-per-class", type=int, default=500)
    ap.add_argument("--queries-per-class", type=int, default=100)
    ap.add_argument("--shares", default="0.25,0.5,0.75", help="object side / scene height, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = ap.parse_args()
    started = time.time()
    embedder = model.Embedder.from_file(args.artifact, device="cpu")
    gallery = cifar10_images(SHARED_DATA, args.gallery_per_class, split="train")
    queries = cifar10_images(SHARED_DATA, args.queries_per_class)
    g_labels = np.array([label for _, label, _ in gallery])
    q_labels = np.array([label for _, label, _ in queries])
    index = faiss.IndexFlatIP(embedder.dim)
    index.add(embedder.embed_arrays(np.stack([embedder.preprocess(Image.open(io.BytesIO(d))) for _, _, d in gallery])))

    def scores(arrays: list[np.ndarray]) -> dict:
        _, found = index.search(embedder.embed_arrays(np.stack(arrays)), 10)
        hits = g_labels[found] == q_labels[:, None]
        return {"precision_at_1": round(float(hits[:, 0].mean()), 4), "precision_at_10": round(float(hits.mean()), 4)}

    alone = scores([embedder.preprocess(Image.open(io.BytesIO(d))) for _, _, d in queries])
    print(f"{embedder.model_id}: gallery {len(gallery)}, queries {len(queries)}; the object alone: {alone}")
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        rng = np.random.default_rng(args.seed)
        whole, region, resized = [], [], []
        for i, (_, label, data) in enumerate(queries):
            others = [j for j in rng.permutation(len(queries))[:20] if q_labels[j] != label]
            scene, crop = _scene(data, queries[others[0]][2], share, rng)
            whole.append(embedder.preprocess(Image.open(io.BytesIO(scene))))
            region.append(embedder.preprocess(Image.open(io.BytesIO(scene)), crop))
            resized.append(embedder.preprocess(Image.open(io.BytesIO(_resized(data, share)))))
        row = {"object_share_of_height": share, "whole_scene": scores(whole), "crop_to_object": scores(region),
               "object_resized_alone": scores(resized)}
        rows.append(row)
        print(f"object {share:.2f} of the height: whole scene {row['whole_scene']}, cropped {row['crop_to_object']}, "
              f"the object scaled as in the scene but alone {row['object_resized_alone']}")
    write_result("crop" + args.tag, {
        "command": command_line(), "machine": machine(), "seconds": round(time.time() - started, 1),
        "artifact": embedder.model_id, "gallery": len(gallery), "queries": len(queries), "scene": list(SCENE),
        "object_alone": alone, "by_object_size": rows})


if __name__ == "__main__":
    main()
