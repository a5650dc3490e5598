"""How long model.load_artifact takes, median of N loads after a first (imports, the zoo), for each artifact;
run against this checkout, or against another one (`--repo`, a git worktree of an earlier commit) to compare.

    .venv/bin/python bench/bench_artifact_load.py [--repo PATH] [--loads 7] ARTIFACT ...

Since the forty-ninth session a load embeds one blank image (a builder argument the network cannot run with is
refused at load, not at the first search): this shows what that costs each CLI command and each service start.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="the checkout to import")
    p.add_argument("--loads", type=int, default=7)
    args = p.parse_args()
    sys.path.insert(0, args.repo)
    import model

    out = {"repo": args.repo, "model_package": model.__file__, "loads": args.loads, "ms": {}}
    for path in args.artifacts:
        model.load_artifact(path)
        times = []
        for _ in range(args.loads):
            t = time.perf_counter()
            model.load_artifact(path)
            times.append(time.perf_counter() - t)
        out["ms"][Path(path).name] = round(statistics.median(times) * 1e3, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
