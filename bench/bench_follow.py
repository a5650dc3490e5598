"""How long a read-only replica takes to apply a writer's changes (`Store.refresh`), by gallery size.

    .venv/bin/python bench/bench_follow.py [--sizes 100000,1000000] [--tag _s27]

For each size: a store of that many random unit vectors (dim 256, metadata {"n": i}) is written in a
temporary folder, a read-only Store opened on it, and then timed: refresh() with nothing committed;
after one metadata edit; after 1,000 upserts (half of them replacing items) and 100 deletions;
after 100 label edits; after 10,000 deletions in one call (and that call's time). Also the
time to open the read-only store, which is what a replica restarted instead of refreshed would pay, and a
writer's first and second single-item writes after it opens the store again (the first grows FAISS's
flat array, as a replica's first refresh that adds does).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402
from index import Item, Store, StoreConfig  # noqa: E402

DIM = 256


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def study(size: int) -> dict:
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-follow-"))
    try:
        writer = Store.open(StoreConfig(folder, dim=DIM, model_id="bench", snapshot_every=0))
        t_fill = 0.0
        for start in range(0, size, 50_000):
            n = min(50_000, size - start)
            vecs = _unit(rng, n)
            t, _ = _timed(lambda: writer.upsert([Item(f"i{start + k}", vecs[k], None, {"n": start + k})
                                                 for k in range(n)]))
            t_fill += t
        writer.snapshot()
        t_open, reader = _timed(lambda: Store.open(StoreConfig(folder, read_only=True)))
        out = {"items": size, "fill_seconds": t_fill, "open_read_only_seconds": t_open}
        out["refresh_first_seconds"], out["refresh_first"] = _timed(reader.refresh)
        out["refresh_nothing_seconds"], out["refresh_nothing"] = _timed(reader.refresh)
        writer.update("i7", metadata_patch={"edited": True})
        out["refresh_one_edit_seconds"], out["refresh_one_edit"] = _timed(reader.refresh)
        vecs = _unit(rng, 1000)
        writer.upsert([Item(f"i{k}" if k < 500 else f"new{k}", vecs[k], None, {"n": k}) for k in range(1000)])
        writer.delete([f"i{k}" for k in range(1000, 1100)])
        out["refresh_1000_upserts_100_deletes_seconds"], out["refresh_1000_upserts_100_deletes"] = _timed(reader.refresh)
        assert reader.count() == writer.count(), (reader.count(), writer.count())
        for k in range(100):
            writer.update(f"i{2000 + k}", label="edited")
        out["refresh_100_edits_seconds"], out["refresh_100_edits"] = _timed(reader.refresh)
        doomed = [f"i{k}" for k in range(10_000, 20_000)]
        out["writer_delete_10000_seconds"], _ = _timed(lambda: writer.delete(doomed))
        out["refresh_10000_deletes_seconds"], out["refresh_10000_deletes"] = _timed(reader.refresh)
        assert reader.count() == writer.count() and reader.count(label="edited") == 100
        reader.close()
        writer.close()
        # the writer's side of the same growth: its first write after opening the store again
        writer = Store.open(StoreConfig(folder, dim=DIM, model_id="bench", snapshot_every=0))
        vecs = _unit(rng, 2)
        out["writer_first_write_seconds"], _ = _timed(lambda: writer.upsert([Item("after-0", vecs[0], None, {})]))
        out["writer_second_write_seconds"], _ = _timed(lambda: writer.upsert([Item("after-1", vecs[1], None, {})]))
        writer.close()
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    machine = _common.machine()
    results = []
    for size in [int(x) for x in args.sizes.split(",")]:
        r = study(size)
        results.append(r)
        print(f"{size:>9,} items: open read-only {r['open_read_only_seconds']:.2f} s; refresh: first "
              f"{r['refresh_first_seconds']:.3f} s, nothing committed {1e3 * r['refresh_nothing_seconds']:.2f} ms, "
              f"one edit {r['refresh_one_edit_seconds']:.3f} s {r['refresh_one_edit']}, 1,000 upserts + 100 "
              f"deletes {r['refresh_1000_upserts_100_deletes_seconds']:.3f} s {r['refresh_1000_upserts_100_deletes']}, "
              f"100 edits {r['refresh_100_edits_seconds']:.3f} s, 10,000 deletes {r['refresh_10000_deletes_seconds']:.3f} s "
              f"(the writer's delete of them {r['writer_delete_10000_seconds']:.3f} s); "
              f"a writer's first write after opening {r['writer_first_write_seconds']:.3f} s, its second "
              f"{r['writer_second_write_seconds']:.3f} s")
    _common.write_result("follow" + args.tag, {"command": _common.command_line(), "machine": machine,
                                               "results": results})


if __name__ == "__main__":
    main()
