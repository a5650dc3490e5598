"""Long training runs on a lent GPU, side by side, sized to end before $DEADLINE (unix seconds).

Each run is a plain `simsearch train` process. All start with a large epoch count; once every run has logged
CALIBRATE epochs, their epoch times (the last one logged, with all runs sharing the GPU) fix how many epochs
fit before the deadline, less EVAL_S for the test scores. The runs are then started afresh with that count
(the cosine schedule needs it), and stopped at the deadline if they overrun, keeping their checkpoints.
Writes under /tmp/runs/NAME/: the artifact, its .metrics.json, log.txt, and the .ckpt of an unfinished run.
Environment: ONLY=NAME,NAME runs a subset of RUNS; MAX_EPOCHS caps the fitted count (say 64 for one run
alone, which then ends early rather than running longer than its recipe); RUNS_EXTRA adds train flags.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("SIMSEARCH_SHARED_DATA", "/tmp/data"))
DEADLINE = float(os.environ["DEADLINE"])
EVAL_S = 45.0
CALIBRATE = 2
RES = ["--arch", "norm=true", "--arch", "residual=true", "--arch", "widths=[32,64,64]"]
RUNS = {
    # the bundled hybrid1-res-cifar10 recipe, first convolution at stride 1 (4x the compute, same parameters)
    "hybrid1-res-s1-cifar10": ("cifar10-jpeg.tar", RES + ["--arch", "strides=[1,2,2]", "--set", "erase=0.5"]),
    # the bundled recipe as it is, for longer
    "hybrid1-res-long-cifar10": ("cifar10-jpeg.tar", RES + ["--set", "erase=0.5"]),
    # the bundled hybrid1-res-fashion-mnist recipe (strides 1,2,2), for longer
    "hybrid1-res-long-fashion-mnist": ("fashion-mnist", RES + ["--arch", "strides=[1,2,2]", "--set", "erase=0.25"]),
    # and with the second convolution at stride 1 too
    "hybrid1-res-s11-fashion-mnist": ("fashion-mnist", RES + ["--arch", "strides=[1,1,2]", "--set", "erase=0.25"]),
}


def start(name: str, epochs: int) -> tuple[subprocess.Popen, Path]:
    data, extra = RUNS[name]
    d = Path("/tmp/runs") / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("*"):
        f.unlink()
    log = d / "log.txt"
    cmd = [sys.executable, "-m", "cli", "train", str(DATA / data), "--out", str(d / f"{name}.safetensors"),
           "--name", name, "--loss", "ce+ms", "--val-fraction", "0", "--epochs", str(epochs), "--quiet",
           "--threads", "2", *extra, *os.environ.get("RUNS_EXTRA", "").split()]
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return p, log


def epochs_logged(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith('{"epoch"'):
            out.append(json.loads(line))
    return out


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
    t0 = time.time()
    only = [n for n in os.environ.get("ONLY", "").split(",") if n]
    unknown = sorted(set(only) - set(RUNS))
    if unknown:
        raise SystemExit(f"ONLY names unknown runs {unknown}; known: {sorted(RUNS)}")
    names = only or list(RUNS)
    cap = int(os.environ.get("MAX_EPOCHS", "1000"))
    procs = {n: start(n, 1000) for n in names}
    sec: dict[str, float] = {}
    while len(sec) < len(names) and time.time() < t0 + 120:
        time.sleep(2)
        for n, (p, log) in procs.items():
            h = epochs_logged(log)
            if n not in sec and len(h) >= CALIBRATE:
                sec[n] = h[-1]["seconds"]
            if p.poll() is not None and n not in sec:
                print(f"{n} ended early:\n{log.read_text()[-2000:]}")
                sec[n] = float("inf")
    for p, _ in procs.values():
        stop(p)
    window = DEADLINE - time.time() - EVAL_S - 15  # 15 s: loading the cached dataset, building the model
    plan = {n: min(cap, max(1, int(window / (s * 1.15)))) if s != float("inf") else 0 for n, s in sec.items()}
    print(f"calibration ({time.time() - t0:.0f} s): seconds per epoch side by side {sec}; window {window:.0f} s; "
          f"epochs {plan}", flush=True)
    procs = {n: start(n, e) for n, e in plan.items() if e > 0}
    while time.time() < DEADLINE and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(3)
    for n, (p, log) in procs.items():
        state = "finished" if p.poll() == 0 else f"stopped (exit {p.poll()})"
        stop(p)
        h = epochs_logged(log)
        print(f"{n}: {state} after {len(h)}/{plan[n]} epochs; last lines:")
        print("\n".join(log.read_text().splitlines()[-4:]), flush=True)


if __name__ == "__main__":
    main()
