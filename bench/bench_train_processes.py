"""Training in several processes on a CPU: seconds an epoch of `simsearch train` in N processes of one thread
(`--nproc N`, DDP over gloo) against one process of one thread and one process of N threads, same run.

    .venv/bin/python bench/bench_train_processes.py [--data ../shared/data/cifar10-jpeg.tar] [--max-train 20000]
        [--epochs 3] [--nproc 2] [--rounds 2] [--tag ""]

Each variant is the whole command (the default recipe: hybrid1, ce+ms, augmentation, batch 128), run in
turn, `--rounds` times, interleaved; an epoch's time is the trainer's own per-epoch wall time from the
metrics JSON (the first epoch left out: it includes warming up), and each variant's figure is the median
over its rounds and epochs. The test precision@1 of each run is reported beside it: the variants train the
same recipe on the same batches, so it should agree within the noise of augmentation. Writes
docs/results/bench_train_processes{TAG}.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def run(data: str, out: Path, max_train: int, epochs: int, procs: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "cli", "train", data, "--out", str(out), "--epochs", str(epochs),
           "--max-train", str(max_train), "--val-fraction", "0", "--threads", str(threads), "--quiet"]
    if procs > 1:
        cmd += ["--nproc", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    subprocess.run(cmd, cwd=_common.REPO, env=env, check=True, capture_output=True, text=True)
    meta = json.loads(out.with_name(out.name.removesuffix(".safetensors") + ".metrics.json").read_text())
    return {"epoch_seconds": [h["seconds"] for h in meta["training"]["history"]],
            "precision_at_1": meta["metrics"]["precision_at_1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(_common.REPO.parent / "shared" / "data" / "cifar10-jpeg.tar"))
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    n = args.nproc
    variants = {"1 process, 1 thread": (1, 1), f"1 process, {n} threads": (1, n),
                f"{n} processes, 1 thread each": (n, 1)}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, (procs, threads)) in enumerate(variants.items()):
                res = run(args.data, Path(tmp) / f"r{r}v{i}.safetensors", args.max_train, args.epochs, procs, threads)
                runs[name].append(res)
                print(f"round {r + 1}: {name}: epochs {res['epoch_seconds']} s, p@1 {res['precision_at_1']:.4f}",
                      flush=True)
    base = statistics.median(s for res in runs["1 process, 1 thread"] for s in res["epoch_seconds"][1:])
    table = {}
    for name, results in runs.items():
        sec = statistics.median(s for res in results for s in res["epoch_seconds"][1:])
        table[name] = {"median_epoch_seconds": sec, "speedup_over_1_thread": round(base / sec, 2),
                       "precision_at_1": [res["precision_at_1"] for res in results], "runs": results}
    print(f"\n{args.max_train} training images, {args.epochs} epochs, median seconds an epoch (first left out):")
    for name, row in table.items():
        print(f"  {name:32s} {row['median_epoch_seconds']:7.1f} s  x{row['speedup_over_1_thread']:.2f}  "
              f"p@1 {', '.join(f'{p:.4f}' for p in row['precision_at_1'])}")
    _common.write_result(f"train_processes{args.tag}", {
        "command": _common.command_line(), "machine": _common.machine(), "data": args.data,
        "max_train": args.max_train, "epochs": args.epochs, "rounds": args.rounds, "variants": table})


if __name__ == "__main__":
    main()
