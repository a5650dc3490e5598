"""How well do several models retrieve together? (run by hand; quality, not speed)

The teacher of `simsearch train --teacher A --teacher B` is an ensemble: the similarity of two images is
the mean of the models' cosine similarities, i.e. the cosine of their L2-normalised embeddings
concatenated (training/_distill.py). This measures that ensemble on the test split with the same
leave-one-out measure as `simsearch evaluate` (precision@1, MAP@R, recall@10), each model with its own
normalisation and test-time augmentation, next to each model alone.

    .venv/bin/python bench/ensemble_retrieval.py ../shared/data/cifar10-jpeg.tar \
        model/weights/hybrid1-res-s1-cifar10.safetensors model/weights/hybrid1-res-cifar10.safetensors

Writes docs/results/bench_ensemble_retrieval.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("precision_at_1", "mean_average_precision_at_r", "recall_at_10")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="dataset (the test split is used)")
    p.add_argument("artifacts", nargs="+", help="two or more model artifacts for the same images")
    p.add_argument("--out", default=str(REPO / "docs/results/bench_ensemble_retrieval.json"))
    args = p.parse_args(argv)

    import torch

    import model
    from training import load_dataset, retrieval_metrics
    from training._distill import ensemble_of, teacher_embeddings

    ds = load_dataset(args.data)
    x, y = ds.test.images, ds.test.labels
    rows, parts, all_ids = [], [], []
    for path in args.artifacts:  # each model embeds the test split once; the ensemble reuses those
        emb, _, ids = teacher_embeddings([path], x, ds.in_chans, ds.image_size, torch.device("cpu"))
        parts.append(emb)
        all_ids += ids
        m = retrieval_metrics(emb, y)
        rows.append({"models": ids, "tta": [model.read_meta(path).tta], **{k: round(m[k], 4) for k in KEYS}})
        print(rows[-1], flush=True)
    m = retrieval_metrics(ensemble_of(parts), y)  # retrieval_metrics L2-normalises
    rows.append({"models": all_ids, "ensemble": True, **{k: round(m[k], 4) for k in KEYS}})
    print(rows[-1])
    result = {"command": " ".join([".venv/bin/python", "bench/ensemble_retrieval.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dataset": ds.describe(),
              "test_size": len(y), "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
