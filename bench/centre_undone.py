"""What the centring a training run chose bought on the test split (run by hand; quality, not speed).

A run with a validation split picks the share of the mean embedding to take off there
(training/_centre.py) and ships the centred weights, so its recorded test scores are the centred ones
only. This undoes the centring on the artifact and scores both on the test split, which played no part
in the choice: the trainer's mean is recomputed on the same seeded sample of the same training split
(`training._trainer.run_splits`, the run's own splits; the test split is the run's too),
where the centred network leaves (1 - share) of it, and share / (1 - share) of that is added back
(`fold_shift` with the opposite sign). Needs an artifact whose `meta.training` records a `centre` below 1.

    .venv/bin/python bench/centre_undone.py RUN.safetensors ../shared/data/cifar10-jpeg.tar [--tag _NAME]

Writes docs/results/bench_centre_undone[_NAME].json.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import model  # noqa: E402
from _common import QUALITY_KEYS, run_per_artifact  # noqa: E402
from training import TrainConfig, load_dataset, retrieval_metrics  # noqa: E402
from training._centre import fold_shift, mean_embedding  # noqa: E402
from training._evaluate import embed_images  # noqa: E402
from training._trainer import run_splits  # noqa: E402


def undo(artifact: str, data: str) -> dict:
    """Test scores of the artifact as shipped and with its centring undone."""
    art = model.load_artifact(artifact)
    meta, training = art.meta, art.meta.training
    share, cfg = training.get("centre"), TrainConfig.from_dict(training["config"])
    if share is None or not 0 < share < 1:
        raise SystemExit(f"{artifact}: its training took off a share of {share!r}; this undoes one in (0, 1)")
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size, test_fraction=cfg.test_fraction)
    train, _, test = run_splits(cfg, ds)
    left = mean_embedding(art.model, train.images, meta.mean, meta.std, tta=meta.tta, seed=cfg.seed)
    rows = {}
    for name, shift in ((f"shipped (share {share:g})", None), ("undone (share 0)", -share / (1 - share) * left)):
        if shift is not None:
            fold_shift(art.model, shift)
        res = retrieval_metrics(embed_images(art.model, test.images, meta.mean, meta.std, tta=meta.tta),
                                test.labels)
        rows[name] = {k: round(res[k], 4) for k in QUALITY_KEYS}
        print(f"{art.model_id:34s} {name:22s} " + "  ".join(f"{k} {v:.4f}" for k, v in rows[name].items()), flush=True)
    return {"artifact": artifact, "model_id": art.model_id, "centre": share,
            "centre_val_precision_at_1": training.get("centre_val_precision_at_1"), "results": rows}


def main() -> None:
    run_per_artifact("centre_undone", __doc__, undo)


if __name__ == "__main__":
    main()
