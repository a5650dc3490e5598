"""Where the strict MS figure comes from: its positive and negative parts, anchor by anchor (run by hand).

Not a speed benchmark. `simsearch evaluate`'s `ms_loss` is the mean, over the test split's class-balanced
batches (8 classes x 8) and over every anchor in them, of pml's Multi-Similarity loss after pml's miner:

    (1/alpha) log(1 + sum over mined positives of exp(-alpha (s - base)))
  + (1/beta)  log(1 + sum over mined negatives of exp( beta (s - base)))

with alpha 2, beta 50, base 0.5, epsilon 0.1. This bench takes the same batches
(`training._evaluate._class_balanced_batches`) and the same mined pairs (pml's MultiSimilarityMiner), and
splits the figure into those two parts. Beside them: the share of anchors with no mined pair (they score
0), the mean number of mined positives, the quantiles of each anchor's hardest positive and hardest negative
cosine, and the floor of the positive part for an anchor whose 7 positives are all mined even at cosine 1,
(1/alpha) log(1 + 7 exp(-alpha (1 - base))) = 0.637: below it an average can only fall through anchors
that mine nothing. The sum of the parts is checked against `ms_loss`.

    .venv/bin/python bench/ms_anatomy.py model/weights/hybrid1-cifar10.safetensors \\
        ../shared/data/cifar10-jpeg.tar [MORE ARTIFACT DATA PAIRS...] [--tag _NAME]

Writes docs/results/bench_ms_anatomy[_NAME].json.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import model  # noqa: E402
from _common import run_per_artifact  # noqa: E402
from training import load_dataset, retrieval_metrics  # noqa: E402
from training._evaluate import _class_balanced_batches, embed_images, ms_loss  # noqa: E402

ALPHA, BETA, BASE, EPSILON, M, CLASSES_PER_BATCH = 2.0, 50.0, 0.5, 0.1, 8, 8


def _pair_mask(n: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def anatomy(embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """The strict MS figure of `embeddings` split per anchor into its positive and negative parts."""
    from pytorch_metric_learning import miners

    miner = miners.MultiSimilarityMiner(epsilon=EPSILON)
    unit = F.normalize(embeddings.float(), dim=1)
    pos_parts, neg_parts, mined_pos, hardest_pos, hardest_neg = [], [], [], [], []
    for idx in _class_balanced_batches(labels, M, CLASSES_PER_BATCH, seed=0):
        e, y = unit[idx], labels[idx]
        n = len(idx)
        sim = e @ e.T
        a1, p, a2, neg = miner(e, y)
        pos_mask, neg_mask = _pair_mask(n, a1, p), _pair_mask(n, a2, neg)
        zero = torch.zeros_like(sim)
        pos_sum = torch.where(pos_mask, torch.exp(-ALPHA * (sim - BASE)), zero).sum(1)
        neg_sum = torch.where(neg_mask, torch.exp(BETA * (sim - BASE)), zero).sum(1)
        pos_parts.append(torch.log1p(pos_sum) / ALPHA)
        neg_parts.append(torch.log1p(neg_sum) / BETA)
        mined_pos.append(pos_mask.sum(1).float())
        same = y[:, None] == y[None, :]
        off_diagonal = ~torch.eye(n, dtype=torch.bool)
        hardest_pos.append(sim.masked_fill(~(same & off_diagonal), math.inf).min(1).values)
        hardest_neg.append(sim.masked_fill(same, -math.inf).max(1).values)
    pos, neg = torch.cat(pos_parts), torch.cat(neg_parts)
    q = torch.tensor([0.1, 0.5, 0.9])
    return {
        "ms_loss": ms_loss(embeddings, labels)["ms_loss"],
        "positive_part": float(pos.mean()),
        "negative_part": float(neg.mean()),
        "anchors_with_no_mined_pair": float(((pos == 0) & (neg == 0)).float().mean()),
        "mean_mined_positives": float(torch.cat(mined_pos).mean()),
        "hardest_positive_cos_q10_q50_q90": [round(float(v), 4) for v in torch.quantile(torch.cat(hardest_pos), q)],
        "hardest_negative_cos_q10_q50_q90": [round(float(v), 4) for v in torch.quantile(torch.cat(hardest_neg), q)],
        "positive_part_floor_all_mined_at_cos_1": math.log1p((M - 1) * math.exp(-ALPHA * (1 - BASE))) / ALPHA,
    }


def study(artifact: str, data: str) -> dict:
    """The anatomy of one artifact's strict MS figure on the test split of `data`, with its precision@1."""
    art = model.load_artifact(artifact)
    meta = art.meta
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size)
    test = ds.test
    emb = embed_images(art.model, test.images, meta.mean, meta.std, tta=meta.tta)
    out = anatomy(emb, test.labels)
    if abs(out["positive_part"] + out["negative_part"] - out["ms_loss"]) > 1e-3:
        raise SystemExit(f"{artifact}: the parts sum to {out['positive_part'] + out['negative_part']:.5f}, "
                         f"ms_loss is {out['ms_loss']:.5f}")
    out["precision_at_1"] = retrieval_metrics(emb, test.labels, only_p1=True)["precision_at_1"]
    print(f"{art.model_id:36s} MS {out['ms_loss']:.4f} = positive {out['positive_part']:.4f} + negative "
          f"{out['negative_part']:.4f}; no mined pair {out['anchors_with_no_mined_pair']:.3f}; "
          f"p@1 {out['precision_at_1']:.4f}", flush=True)
    return {"artifact": artifact, "model_id": art.model_id, "tta": meta.tta, "dataset": ds.describe(), **out}


def main() -> None:
    run_per_artifact("ms_anatomy", __doc__, study)


if __name__ == "__main__":
    main()
