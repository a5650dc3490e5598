"""Retrieval quality in the search page's setting, model against model (run by hand).

The page test and docs/screenshot.png index 30 CIFAR-10 (JPEG) test images per class and query with a
training-split image. One query is an anecdote; this measures the same setting over many: the gallery is
`cifar10_images(shared, 30)` and the queries the first `--per-class` training images of every class, all
decoded and embedded the way the service does (`Embedder.embed` on the JPEG). Prints mean precision@1 and
precision@12 (the page's default k) per model, and precision@12 for the car queries (the screenshot's class).

    .venv/bin/python bench/quality_page.py model/weights/hybrid1-cifar10.safetensors OTHER.safetensors
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import model  # noqa: E402
from tests.app._browser import cifar10_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("-k", type=int, default=12)
    args = ap.parse_args()
    gallery = cifar10_images(Path(args.shared), 30)
    queries = cifar10_images(Path(args.shared), args.per_class, split="train")
    g_labels = np.array([label for _, label, _ in gallery])
    q_labels = np.array([label for _, label, _ in queries])
    cars = q_labels == "automobile"
    print(f"gallery {len(gallery)} test images, {len(queries)} training-split queries, k={args.k}")
    for path in args.artifacts:
        embedder = model.Embedder.from_file(path, device="cpu")
        g = embedder.embed([Image.open(io.BytesIO(data)) for _, _, data in gallery])
        q = embedder.embed([Image.open(io.BytesIO(data)) for _, _, data in queries])
        top = np.argsort(-(q @ g.T), axis=1)[:, :args.k]
        hits = g_labels[top] == q_labels[:, None]
        print(f"{embedder.model_id}: p@1 {hits[:, 0].mean():.3f}  p@{args.k} {hits.mean():.3f}  "
              f"car queries p@{args.k} {hits[cars].mean():.3f}")


if __name__ == "__main__":
    main()
