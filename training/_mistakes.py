"""The test split's most confident mistakes: queries whose nearest neighbour (leave-one-out, as precision@1
counts it) is of another class, the nearest first. Near the top are the images a user should look at:
duplicates filed under two classes, labels that are wrong, classes that overlap. `mistakes_sheet` draws
them with their neighbours as one PNG, as TensorFlow Similarity's `viz_neighbors_imgs` does for a query."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_TILE = 96            # pixels a side for each image on the sheet (small images are enlarged, pixels kept sharp)
_CAPTION = 3 * 12     # three lines of text under each tile
_PAD = 6
_BORDER = 3
QUERY, RIGHT, WRONG = (40, 90, 220), (30, 150, 60), (210, 40, 40)   # tile frames: query, same class, other class
# TrueType fonts with accented, Greek and Cyrillic letters, tried in turn (Pillow looks a bare name up among the
# system's fonts: XDG's fonts folders on Linux, the Fonts folders on macOS and Windows); Pillow's own default font
# draws any letter outside ASCII as a box
FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
         "/usr/share/fonts/TTF/DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial Unicode.ttf", "arial.ttf")


@functools.lru_cache(maxsize=8)
def caption_font(size: int):
    """The first of FONTS that Pillow finds, at `size` pixels (class names in any alphabet it covers); Pillow's
    default font where none is installed."""
    from PIL import ImageFont

    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def confident_mistakes(labels: torch.Tensor, neighbours: tuple[torch.Tensor, torch.Tensor], top: int,
                       class_names: list[str] | None = None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The `top` queries whose nearest neighbour is of another class, the most similar pair first: each with
    its index in the split (`query`, `neighbour`), both classes, the pair's cosine and, when the split has
    them, both files. Queries whose class has no other item are left out, as in precision@1. `neighbours`:
    training._evaluate._nearest_neighbours's (index, distance between unit vectors)."""
    idx, dist = neighbours
    _, inverse, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    wrong = torch.nonzero((labels[idx] != labels) & (sizes[inverse] > 1)).flatten()
    order = wrong[torch.argsort(dist[wrong], stable=True)][:top]

    def cls(i: int) -> str:
        return _class_name(labels, i, class_names)

    out = []
    for q in order.tolist():
        n = int(idx[q])
        row = {"query": q, "neighbour": n, "query_class": cls(q), "neighbour_class": cls(n),
               "cosine": float(1 - dist[q].double() ** 2 / 2)}   # distance between unit vectors -> cosine
        if names is not None:
            row.update(query_file=names[q], neighbour_file=names[n])
        out.append(row)
    return out


def mistakes_sheet(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor,
                   mistakes: list[dict[str, Any]], k: int = 6, class_names: list[str] | None = None,
                   names: list[str] | None = None, title: str = "") -> Path:
    """Write a PNG with one row per mistake: the query (blue frame) and its `k` nearest neighbours in the
    split, each framed green when of the query's class and red when not, captioned with its class, its
    cosine to the query and its file. Returns the path."""
    from PIL import Image, ImageDraw
    from pytorch_metric_learning.utils.inference import FaissKNN

    emb = F.normalize(embeddings.float(), dim=1)
    rows = [m["query"] for m in mistakes]
    k = max(1, min(k, len(labels) - 1))
    if rows:
        # k + 1 so that the query itself, found first, can be dropped
        _, found = FaissKNN()(emb[rows], k + 1, emb, ref_includes_query=False)
    font = caption_font(11)
    cell_w, cell_h = _TILE + 2 * _BORDER, _TILE + 2 * _BORDER + _CAPTION
    head = 20
    sheet = Image.new("RGB", (_PAD + (k + 1) * (cell_w + _PAD), head + _PAD + max(1, len(rows)) * (cell_h + _PAD)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, 4), title or f"{len(rows)} most confident mistakes", fill="black", font=font)
    if not rows:
        draw.text((_PAD, head + _PAD), "no query has a nearest neighbour of another class", fill="black", font=font)

    def cls(i: int) -> str:
        return _class_name(labels, i, class_names)

    for r, q in enumerate(rows):
        y = head + _PAD + r * (cell_h + _PAD)
        others = [int(j) for j in found[r].tolist() if int(j) != q][:k]
        for c, i in enumerate([q] + others):
            x = _PAD + c * (cell_w + _PAD)
            frame = QUERY if c == 0 else RIGHT if int(labels[i]) == int(labels[q]) else WRONG
            draw.rectangle([x, y, x + cell_w - 1, y + cell_w - 1], fill=frame)
            sheet.paste(picture(images[i], _TILE), (x + _BORDER, y + _BORDER))
            cos = "query" if c == 0 else f"cos {float(emb[q] @ emb[i]):.3f}"
            lines = [_fit(draw, cls(i), font, cell_w), cos,
                     _fit(draw, names[i], font, cell_w, keep_end=True) if names is not None else f"test image {i}"]
            for n, text in enumerate(lines):
                draw.text((x, y + cell_w + 1 + 12 * n), text, fill=frame if n == 0 else "black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, "PNG")
    return path


def picture(pixels: torch.Tensor, side: int):
    """One image of a split (uint8 C x H x W) as an RGB PIL image `side` pixels square: small images enlarged
    with their pixels kept sharp."""
    from PIL import Image

    arr = pixels.numpy()
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)))
    small = max(im.size) <= side // 2
    return im.convert("RGB").resize((side, side), Image.Resampling.NEAREST if small else Image.Resampling.BILINEAR)


def _class_name(labels: torch.Tensor, i: int, class_names: list[str] | None) -> str:
    c = int(labels[i])
    return class_names[c] if class_names and c < len(class_names) else str(c)


def _fit(draw, text: str, font, width: int, keep_end: bool = False) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels: its end kept for a file's path, its start otherwise."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text if keep_end else text + "…", font=font) > width:
        text = text[1:] if keep_end else text[:-1]
    return "…" + text if keep_end else text + "…"
