"""A writer process for the kill -9 test: upserts items one at a time and prints each id to
stdout (flushed) only after upsert() has returned, i.e. after the store acknowledged it.

    python -m tests.index._writer STORE_DIR N [--snapshot-at M] [--index SPEC] [--start S]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from index import Item, Store, StoreConfig

DIM = 32
MODEL_ID = "test-model@000000000000"


def vector_for(i: int) -> np.ndarray:
    """The deterministic unit vector of item i (the test recomputes it to check what was stored)."""
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("n", type=int)
    ap.add_argument("--snapshot-at", type=int, default=-1)
    ap.add_argument("--index", default="flat")
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    store = Store.open(StoreConfig(args.path, dim=DIM, model_id=MODEL_ID, index=args.index,
                                   snapshot_every=0, train_threshold=200))
    print("ready", flush=True)
    for i in range(args.start, args.start + args.n):
        store.upsert([Item(f"item-{i}", vector_for(i), label=f"l{i % 3}", metadata={"i": i})])
        sys.stdout.write(f"item-{i}\n")
        sys.stdout.flush()
        if i == args.snapshot_at:
            store.snapshot()
            print("snapshot", flush=True)
    store.close()


if __name__ == "__main__":
    main()
