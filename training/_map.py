"""A map of the embedding: test images laid out in two dimensions by scikit-learn's t-SNE, each drawn as a
small picture framed in its class's colour, into one PNG (TensorFlow Similarity's projector does this in
a notebook). Tight clusters, classes that run into each other and images sitting among another class show
at a glance. A map can mislead, so it comes with two checks: scikit-learn's `trustworthiness` (1.0: every
image's 10 nearest on the map are among its nearest in the embedding) and how often an image's nearest
neighbour on the map is of its class, beside the same figure in the embedding itself."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._mistakes import caption_font, picture

# 20 colours told apart on white (Kelly's, less the whites and greys): class i gets PALETTE[i % 20]
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#000075",
           "#808000", "#800000", "#469990", "#bfef45", "#ffe119", "#dcbeff", "#aaffc3", "#fabed4", "#ffd8b1",
           "#a9a9a9", "#000000"]
_SIDE = 1400          # the map's square, in pixels
_LEGEND = 240         # the legend's column beside it
_HEAD = 28            # the title's line
_NEIGHBOURS = 10      # for trustworthiness


def embedding_map(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor,
                  class_names: list[str] | None = None, points: int = 2000, seed: int = 0, title: str = "",
                  thumb: int | None = None) -> dict[str, Any]:
    """Write the map of (at most) `points` of the images, a seeded sample, to the PNG `path`; returns
    {path, points, trustworthiness, same_class_nearest_on_map, same_class_nearest_in_embedding}."""
    from PIL import Image, ImageDraw
    from sklearn.manifold import TSNE, trustworthiness

    n = len(labels)
    if n < 3:
        raise ValueError(f"a map needs at least 3 test images, got {n}")
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(points, n), replace=False))
    x = F.normalize(embeddings[pick].float(), dim=1).numpy()
    y = TSNE(n_components=2, perplexity=min(30.0, (len(pick) - 1) / 3), init="pca",
             random_state=seed).fit_transform(x)
    y = (y - y.min(0)) / np.maximum(y.max(0) - y.min(0), 1e-12)   # 0..1 both ways
    lab = labels[pick].numpy()
    near = min(_NEIGHBOURS, (len(pick) - 1) // 2)
    checks = {"points": int(len(pick)),
              "trustworthiness": round(float(trustworthiness(x, y, n_neighbors=near)), 4),
              "same_class_nearest_on_map": _same_class_nearest(y, lab),
              "same_class_nearest_in_embedding": _same_class_nearest(x, lab, cosine=True)}

    side = thumb or int(np.clip(_SIDE / np.sqrt(len(pick)) * 0.9, 12, 48))   # smaller pictures for more points
    canvas = Image.new("RGB", (_SIDE + _LEGEND, _SIDE + _HEAD), "white")
    draw = ImageDraw.Draw(canvas)
    font = caption_font(13)
    draw.text((8, 6), title or f"{len(pick)} test images placed by t-SNE of their embeddings", fill="black", font=font)
    span = _SIDE - side - 4
    for i in np.random.default_rng(seed + 1).permutation(len(pick)):   # no class drawn on top of all the others
        px, py = int(2 + y[i, 0] * span), int(_HEAD + 2 + y[i, 1] * span)
        draw.rectangle([px - 2, py - 2, px + side + 1, py + side + 1], fill=PALETTE[int(lab[i]) % len(PALETTE)])
        canvas.paste(picture(images[pick[i]], side), (px, py))
    x0, line = _SIDE + 12, 20
    classes, counts = np.unique(lab, return_counts=True)
    draw.text((x0, _HEAD), "classes (images on the map)", fill="black", font=font)
    for row, (c, count) in enumerate(zip(classes[:40], counts[:40], strict=True), start=1):
        top = _HEAD + row * line
        draw.rectangle([x0, top + 2, x0 + 14, top + 14], fill=PALETTE[int(c) % len(PALETTE)])
        name = class_names[int(c)] if class_names and int(c) < len(class_names) else str(int(c))
        draw.text((x0 + 20, top), f"{name[:24]} ({count})", fill="black", font=font)
    if len(classes) > 40:
        draw.text((x0, _HEAD + 41 * line), f"and {len(classes) - 40} more", fill="black", font=font)
    if len(classes) > len(PALETTE):
        draw.text((x0, _HEAD + 42 * line), f"(colours repeat after {len(PALETTE)})", fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, "PNG")
    return {"path": str(out), **checks}


def _same_class_nearest(points: np.ndarray, labels: np.ndarray, cosine: bool = False) -> float:
    """The share of points whose nearest other point (Euclidean; inner product for unit vectors) has their
    label, from a FAISS exact search (no N x N matrix)."""
    import faiss

    p = np.ascontiguousarray(points, dtype=np.float32)
    index = faiss.IndexFlatIP(p.shape[1]) if cosine else faiss.IndexFlatL2(p.shape[1])
    index.add(p)
    _, found = index.search(p, 2)
    # the point itself is normally first; where a duplicate tied with it, take whichever is not itself
    nearest = np.where(found[:, 0] == np.arange(len(p)), found[:, 1], found[:, 0])
    return round(float((labels[nearest] == labels).mean()), 4)
