"""Could a linear map fitted on the training split, folded into the embedding layer, search better? (run by hand)

Not a speed benchmark. Centring (`simsearch evaluate --centre`) is one such map: it lowers the strict MS
loss of the faithful CIFAR-10 model a little and raises precision@1 a little. This bench tries two richer
ones that use the training labels, each of which could be folded into the embedding layer's weights the way
centring is folded into its bias (same architecture, same parameter count):

- `wcw-<p>`: within-class whitening to the power p (the "learned whitening" of image retrieval): the
  embedding times (S_w + 0.1 mean(eig S_w) I)^(-p/2), S_w the covariance of the training embeddings around
  their class means. p = 0 is the artifact as it is;
- `span-<k>`: the span of the class means (around the overall mean) stretched k times, the rest kept.

Each is fitted twice: on a seeded four fifths of the training images and scored on the other fifth (`val`:
images the network was trained on, so only a rough guide), and on the whole training split and scored on
the test split (`test`). Scores: precision@1 and the strict MS loss, as `simsearch evaluate` computes them,
on the embeddings the artifact serves (its own `tta`).

    .venv/bin/python bench/linear_fold_study.py model/weights/hybrid1-cifar10.safetensors \
        ../shared/data/cifar10-jpeg.tar [MORE ARTIFACT DATA PAIRS...]

Writes docs/results/bench_linear_fold_study[_NAME].json (`--tag _NAME`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import model  # noqa: E402
from _common import run_per_artifact  # noqa: E402
from training import load_dataset, retrieval_metrics  # noqa: E402
from training._evaluate import embed_images, ms_loss  # noqa: E402

POWERS = (0.0, 0.25, 0.5, 1.0)
STRETCHES = (1.5, 2.0, 3.0)


def _maps(x: torch.Tensor, y: torch.Tensor) -> dict:
    """The maps fitted on embeddings `x` (float64) with labels `y`, by name."""
    mu = x.mean(0)
    classes, of_class = torch.unique(y, return_inverse=True)
    means = torch.stack([x[y == c].mean(0) for c in classes])
    r = x - means[of_class]
    eigval, eigvec = torch.linalg.eigh(r.T @ r / len(r))
    basis, _ = torch.linalg.qr((means - mu).T)  # orthonormal basis of the class means' span
    out = {}
    for p in POWERS:
        w = (eigvec * (eigval + 0.1 * eigval.mean()).pow(-p / 2)) @ eigvec.T
        out[f"wcw-{p:g}"] = lambda e, w=w: e @ w
    for k in STRETCHES:
        out[f"span-{k:g}"] = lambda e, k=k: e + (k - 1) * (e - mu) @ basis @ basis.T
    return out


def study(artifact: str, data: str) -> dict:
    """Every map's precision@1 and strict MS loss, on a held-out part of the training split and on test."""
    art = model.load_artifact(artifact)
    meta = art.meta
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size)
    train = embed_images(art.model, ds.train.images, meta.mean, meta.std, tta=meta.tta).double()
    test = embed_images(art.model, ds.test.images, meta.mean, meta.std, tta=meta.tta).double()
    y_train, y_test = ds.train.labels, ds.test.labels
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    fit, held = order[:len(order) - len(order) // 5], order[len(order) - len(order) // 5:]
    splits = {"val": (train[fit], y_train[fit], train[held], y_train[held]), "test": (train, y_train, test, y_test)}
    rows: dict[str, dict] = {}
    for split, (x, y, e, labels) in splits.items():
        for name, fn in _maps(x, y).items():
            mapped = fn(e).float()
            row = rows.setdefault(name, {})
            row[split] = {"precision_at_1": round(retrieval_metrics(mapped, labels, only_p1=True)["precision_at_1"], 4),
                          "ms_loss": round(ms_loss(mapped, labels)["ms_loss"], 4)}
            print(f"{art.model_id:32s} {name:9s} {split:4s} p@1 {row[split]['precision_at_1']:.4f}  "
                  f"strict MS {row[split]['ms_loss']:.4f}", flush=True)
    return {"artifact": artifact, "model_id": art.model_id, "tta": meta.tta, "dataset": ds.describe(),
            "results": rows}


def main() -> None:
    run_per_artifact("linear_fold_study", __doc__, study)


if __name__ == "__main__":
    main()
