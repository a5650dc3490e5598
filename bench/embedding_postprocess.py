"""Does a fixed transform of the embeddings (or of the input) retrieve better than the raw ones? (run by hand)

Not a speed benchmark: retrieval quality (precision@1, MAP@R, recall@10; the same leave-one-out
measure as `simsearch evaluate`) on the test split, for transforms that need no training and could be
stored in an artifact:

- `raw`: what the service searches (the embedding, L2-normalised);
- `centered`: minus the training split's mean embedding, then L2-normalised;
- `cl2n`: L2-normalised, minus the mean of the L2-normalised training embeddings, L2-normalised again
  (SimpleShot's CL2N);
- `whiten-<eps>`: PCA whitening fitted on the training split, eigenvalues floored at eps x the largest;
- `logits`, `softmax`: the CE head's outputs (artifacts trained with a CE term only): how far the
  classifier is from the embedding as a search space;
- `hflip`: not a transform of the embedding but of the input: the mean of the embeddings of the image and
  of its mirror image (`model.embed_tensor(..., tta="hflip")`, what an artifact with `meta.tta = "hflip"`
  serves). Every other row starts from the plain embedding (tta "none"), whatever the artifact's own `tta`;
- `hflip-shift4`: the mean over ten views, the image and the image shifted by 2 pixels left, right, up and
  down (reflect padding), each with its mirror image: five times hflip's work, not an artifact option,
  measured to see how much of the gap is invariance the network has not learnt.

    .venv/bin/python bench/embedding_postprocess.py model/weights/hybrid1-res-cifar10.safetensors \
        ../shared/data/cifar10-jpeg.tar [MORE ARTIFACT DATA PAIRS...]

Writes docs/results/bench_embedding_postprocess[_NAME].json (`--tag _NAME`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import model  # noqa: E402
from _common import QUALITY_KEYS, run_per_artifact  # noqa: E402
from training import load_dataset, retrieval_metrics  # noqa: E402
from training._evaluate import embed_images  # noqa: E402


def _transforms(train: torch.Tensor, head: dict | None) -> dict:
    mean = train.mean(0, keepdim=True)
    mean_unit = F.normalize(train, dim=1).mean(0, keepdim=True)
    x = (train - mean).double()
    eigval, eigvec = torch.linalg.eigh(x.T @ x / len(x))
    out = {
        "raw": lambda e: e,
        "centered": lambda e: e - mean,
        "cl2n": lambda e: F.normalize(e, dim=1) - mean_unit,
    }
    for eps in (1e-1, 1e-2, 1e-3):
        w = (eigvec / torch.sqrt(eigval + eps * eigval.max())).float()
        out[f"whiten-{eps:g}"] = lambda e, w=w: (e - mean) @ w
    if head is not None:
        weight, bias = head["weight"].float(), head["bias"].float()
        out["logits"] = lambda e: e @ weight.T + bias
        out["softmax"] = lambda e: (e @ weight.T + bias).softmax(1)
    return out


def _shift(images: torch.Tensor, dx: int, dy: int, pad: int = 2) -> torch.Tensor:
    """uint8 images moved by (dx, dy) pixels, the uncovered border filled by reflection."""
    size = images.shape[-1]
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    return padded[..., pad + dy:pad + dy + size, pad + dx:pad + dx + size].contiguous()


def study(artifact: str, data: str) -> dict:
    """Every transform's retrieval metrics for one artifact on its dataset's test split."""
    art = model.load_artifact(artifact)
    meta = art.meta
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size)
    train = embed_images(art.model, ds.train.images, meta.mean, meta.std)
    test = embed_images(art.model, ds.test.images, meta.mean, meta.std)
    head = art.heads.get("ce_head") if meta.class_names == ds.class_names else None
    rows = {}
    variants = {name: fn(test) for name, fn in _transforms(train, head).items()}
    variants["hflip"] = embed_images(art.model, ds.test.images, meta.mean, meta.std, tta="hflip")
    shifted = [embed_images(art.model, _shift(ds.test.images, dx, dy), meta.mean, meta.std, tta="hflip")
               for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2))]
    variants["hflip-shift4"] = variants["hflip"] + sum(shifted)
    for name, emb in variants.items():
        res = retrieval_metrics(emb, ds.test.labels)
        rows[name] = {k: round(res[k], 4) for k in QUALITY_KEYS}
        print(f"{art.model_id:32s} {name:12s} " + "  ".join(f"{k} {rows[name][k]:.4f}" for k in QUALITY_KEYS), flush=True)
    if head is not None:
        logits = test @ head["weight"].float().T + head["bias"].float()
        rows["head_accuracy"] = round(float((logits.argmax(1) == ds.test.labels).float().mean()), 4)
    return {"artifact": artifact, "model_id": art.model_id, "dataset": ds.describe(), "results": rows}


def main() -> None:
    run_per_artifact("embedding_postprocess", __doc__, study)


if __name__ == "__main__":
    main()
