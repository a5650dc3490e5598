"""How much of the mean embedding to take off: retrieval and MS figures of artifacts centred by each share (run by hand).

Not a speed benchmark. For each ARTIFACT DATA pair: the mean embedding of up to 10,000 training images
(`training._centre.mean_embedding`, the artifact's own test-time augmentation, as `simsearch evaluate --centre`
takes it), then for each share in 0, 0.25, 0.5, 0.75 and 1 the test split's embeddings less that share of
the mean, scored as `simsearch evaluate` scores them (precision@1, MAP@R, R@10, the strict MS figure).
The shares are read off the test split here, so choosing one from this table is choosing on test data.

    .venv/bin/python bench/centre_sweep.py model/weights/hybrid1-cifar10.safetensors \\
        ../shared/data/cifar10-jpeg.tar [MORE ARTIFACT DATA PAIRS...] [--tag _NAME]

Writes docs/results/bench_centre_sweep[_NAME].json.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import model  # noqa: E402
from _common import QUALITY_KEYS, run_per_artifact  # noqa: E402
from training import load_dataset, retrieval_metrics  # noqa: E402
from training._centre import CENTRE_CHOICES, mean_embedding  # noqa: E402
from training._evaluate import embed_images, ms_loss  # noqa: E402


def sweep(artifact: str, data: str) -> dict:
    """Each share's scores for one artifact on its dataset's test split."""
    art = model.load_artifact(artifact)
    meta = art.meta
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size)
    mean = mean_embedding(art.model, ds.train.images, meta.mean, meta.std, tta=meta.tta)
    test = embed_images(art.model, ds.test.images, meta.mean, meta.std, tta=meta.tta)
    rows = {}
    for share in CENTRE_CHOICES:
        emb = test - share * mean
        res = retrieval_metrics(emb, ds.test.labels)
        rows[str(share)] = {**{k: round(res[k], 4) for k in QUALITY_KEYS},
                            "ms_loss": round(ms_loss(emb, ds.test.labels)["ms_loss"], 4)}
        print(f"{art.model_id:34s} share {share:<5g}" + "  ".join(f"{k} {v:.4f}" for k, v in rows[str(share)].items()),
              flush=True)
    return {"artifact": artifact, "model_id": art.model_id, "tta": meta.tta, "dataset": ds.describe(),
            "results": rows}


def main() -> None:
    run_per_artifact("centre_sweep", __doc__, sweep)


if __name__ == "__main__":
    main()
