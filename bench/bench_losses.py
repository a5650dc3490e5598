"""The losses side by side: one model trained with each, the same recipe, seed and epochs, scored on the test
split (run by hand; slow: one training run a loss).

For each `--losses` name (any simsearch train takes, "a+b" included) `training.train` runs the `--preset`
recipe for `--epochs` on `--data` (default CIFAR-10 (JPEG)) with `--threads` torch threads, and the test
split's retrieval metrics (precision@1, MAP@R, recall@10), the cosine between classes, the epoch kept and the
seconds are recorded, one row a loss, into docs/results/bench_losses<TAG>.json. Runs are one after the
other, so the seconds compare within one run of this script only.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_losses.py [--losses ce,ms,ce+ms,triplet,...] [--epochs 10]
        [--model hybrid1] [--data ../shared/data/fashion-mnist] [--max-train N] [--loss-kwargs JSON] [--tag _s45]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import SHARED_DATA, command_line, machine, write_result  # noqa: E402

LOSSES = "ce,ms,ce+ms,triplet,contrastive,circle,supcon,ce+supcon"
KEPT = ("precision_at_1", "mean_average_precision_at_r", "recall_at_10", "ce_accuracy", "ms_loss",
        "mean_cos_same_class", "mean_cos_other_class", "best_epoch", "val_precision_at_1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--losses", default=LOSSES, help=f"comma-separated (default {LOSSES})")
    ap.add_argument("--data", default=str(SHARED_DATA / "cifar10-jpeg.tar"))
    ap.add_argument("--model", default="hybrid1")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-kwargs", default="{}", help='options for every loss of the run, as JSON '
                                                        '(e.g. \'{"triplets": "all"}\')')
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = ap.parse_args()
    loss_kwargs = json.loads(args.loss_kwargs)
    from training import preset, train

    rows, started = {}, time.time()
    with tempfile.TemporaryDirectory() as work:
        for loss in args.losses.split(","):
            cfg = preset(args.preset, model=args.model, loss=loss, epochs=args.epochs, threads=args.threads,
                         seed=args.seed, max_train=args.max_train, loss_kwargs=loss_kwargs)
            t0 = time.time()
            result = train(cfg, args.data, Path(work) / "model.safetensors", progress=False, log=lambda _: None)
            row = {k: round(float(result.metrics[k]), 4) for k in KEPT if result.metrics.get(k) is not None}
            row["seconds"] = round(time.time() - t0, 1)
            rows[loss] = row
            print(f"{loss}: {row}", flush=True)
    write_result("losses" + args.tag, {
        "command": command_line(), "machine": machine(), "seconds": round(time.time() - started, 1),
        "data": args.data, "model": args.model, "preset": args.preset, "epochs": args.epochs,
        "max_train": args.max_train, "seed": args.seed, "loss_kwargs": loss_kwargs, "results": rows})


if __name__ == "__main__":
    main()
