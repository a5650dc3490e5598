"""What rescoring an exact answer costs (2ca4b26: each candidate scored by index._types.exact_scores, so that
copies of a vector tie in the order added and a batched query gets its single answer): Store.search at k=10 on a
flat gallery of random unit vectors, one query and batches of 32, with the rescoring and without it (the "before":
index._faiss.flat_storage patched to return None, which leaves the FAISS search as it was before 2ca4b26),
interleaved round by round in one process.

    .venv/bin/python bench/bench_exact_rescore.py [--items 100000] [--dim 256] [--rounds 5] [--tag _s51]

The gallery is made once in a temporary folder (seed 0). Writes docs/results/bench_exact_rescore<tag>.json."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import command_line, interleaved, machine, random_store, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from index import Store, StoreConfig, _faiss

    real = _faiss.flat_storage

    def rescoring(on: bool) -> None:
        _faiss.flat_storage = real if on else (lambda index, exact: None)

    with tempfile.TemporaryDirectory() as tmp:
        random_store(Path(tmp) / "g", args.items, args.dim).close()
        store = Store.open(StoreConfig(path=Path(tmp) / "g", read_only=True))
        queries = np.random.default_rng(1).standard_normal((32 * 12, args.dim)).astype(np.float32)
        turn = {"i": 0}

        def case(on: bool, batch: int):
            def run() -> int:
                rescoring(on)
                at = (turn["i"] % 12) * 32
                turn["i"] += 1
                store.search(queries[at:at + batch], k=10)
                return batch
            return run

        result = interleaved({"one query, before": case(False, 1), "one query, after": case(True, 1),
                              "batch of 32, before": case(False, 32), "batch of 32, after": case(True, 32)},
                             rounds=args.rounds, seconds=1.0)
        rescoring(True)
        same = all([(h.id, h.score) for h in row] == [(h.id, h.score) for h in store.search(queries[i], k=10)[0]]
                   for i, row in enumerate(store.search(queries[:32], k=10)))
        store.close()
    for kind in ("one query", "batch of 32"):
        before, after = result[f"{kind}, before"], result[f"{kind}, after"]
        print(f"{kind}: {before['sec_per_call_median'] * 1e3:.2f} ms before, {after['sec_per_call_median'] * 1e3:.2f}"
              f" ms after (queries/s after / before {after['median'] / before['median']:.2f})")
    print("each row of a batch equals its query's single answer (after):", same)
    write_result(f"exact_rescore{args.tag}", {"command": command_line(), "machine": machine(), "items": args.items,
                                              "dim": args.dim, "results": result, "batch_equals_single": same})


if __name__ == "__main__":
    main()
