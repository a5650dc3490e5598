"""Search with and without PDDM re-ranking: retrieval quality and per-query latency.

    .venv/bin/python bench/bench_pddm_rerank.py ARTIFACT DATA [--candidates 20,100] [--queries 2000]

Quality, on the dataset's test split, the same protocol as `simsearch evaluate` (leave-one-out: every
query searches all other test images by cosine, exact FAISS): precision@1, R-precision and MAP@R of
the cosine ranking, and of the same ranking with its first N candidates re-ordered by the artifact's
PDDM head (the rest keep their cosine order). Computed over a seeded sample of `--queries` queries
(all queries with --queries 0); the cosine numbers over all queries are printed beside them as a
cross-check against pytorch-metric-learning's AccuracyCalculator.

Latency, through the real gallery store (index.Store, flat, the test split as the gallery) one query
at a time, interleaved rounds: store.search(k=10) against store.search(k=N) + fetching the N candidate
vectors with store.get + PDDM.rerank + keeping the best 10 (what POST /search?rerank=N does).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402


def ranking_metrics(ranked_labels: np.ndarray, query_labels: np.ndarray, r_counts: np.ndarray) -> dict[str, float]:
    """precision@1, R-precision and MAP@R from each query's ranked neighbour labels (self excluded),
    R = the number of other items of the query's class (as pytorch-metric-learning defines them)."""
    rel = ranked_labels == query_labels[:, None]
    p1, rp, mapr = [], [], []
    for row, r in zip(rel, r_counts, strict=True):
        hits = row[:r]
        p1.append(float(row[0]))
        rp.append(hits.sum() / r)
        prec = np.cumsum(hits) / np.arange(1, r + 1)
        mapr.append((prec * hits).sum() / r)
    return {"precision_at_1": float(np.mean(p1)), "r_precision": float(np.mean(rp)),
            "mean_average_precision_at_r": float(np.mean(mapr))}


def main() -> None:  # noqa: C901 (a bench script's main)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("data")
    ap.add_argument("--candidates", default="20,100", help="comma-separated candidate counts to re-rank")
    ap.add_argument("--queries", type=int, default=2000, help="quality: sampled queries (0 = all)")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="result name (default from the artifact file name)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from training import load_dataset
    from training._evaluate import embed_images, retrieval_metrics

    art = model.load_artifact(args.artifact)
    pddm = model.PDDM.from_artifact(art)
    if pddm is None:
        raise SystemExit(f"{args.artifact} has no PDDM head")
    meta = art.meta
    ds = load_dataset(args.data, in_chans=meta.in_chans, image_size=meta.image_size)
    raw = embed_images(art.model, ds.test.images, meta.mean, meta.std, "cpu", tta=meta.tta)  # as the service
    vecs = F.normalize(raw, dim=1).numpy().astype(np.float32)
    labels = ds.test.labels.numpy()
    n = len(labels)
    r_counts = np.bincount(labels)[labels] - 1
    max_r = int(r_counts.max())
    cands = [int(c) for c in args.candidates.split(",")]

    # Quality.
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    rng = np.random.default_rng(0)
    qidx = np.arange(n) if args.queries in (0, None) or args.queries >= n else np.sort(
        rng.choice(n, args.queries, replace=False))
    _, nbr = index.search(vecs[qidx], max_r + 1)
    nbr = np.array([[j for j in row if j != q][:max_r] for q, row in zip(qidx, nbr, strict=True)])
    base = ranking_metrics(labels[nbr], labels[qidx], r_counts[qidx])
    quality: dict = {"cosine": base}
    rerank_seconds = {}
    for c in cands:
        t0 = time.perf_counter()
        order, _ = pddm.rerank(vecs[qidx], vecs[nbr[:, :c]])
        rerank_seconds[c] = time.perf_counter() - t0
        head = np.take_along_axis(nbr[:, :c], order, axis=1)
        quality[f"pddm_top{c}"] = ranking_metrics(labels[np.concatenate([head, nbr[:, c:]], axis=1)],
                                                  labels[qidx], r_counts[qidx])
    full = retrieval_metrics(raw, ds.test.labels)
    cross = {k: full[k] for k in ("precision_at_1", "r_precision", "mean_average_precision_at_r")}

    # Latency through the store.
    from index import Item, Store, StoreConfig

    lat: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(StoreConfig(Path(tmp) / "store", dim=vecs.shape[1], model_id=art.model_id,
                                       index="flat", use_gpu=False))
        names = ds.class_names
        store.upsert([Item(id=f"t{i}", vector=vecs[i], label=names[labels[i]]) for i in range(n)])
        lq = vecs[rng.choice(n, args.latency_queries, replace=False)]
        pos = {"i": 0}

        def next_query() -> np.ndarray:
            pos["i"] = (pos["i"] + 1) % len(lq)
            return lq[pos["i"]]

        def plain() -> int:
            store.search(next_query(), k=10)
            return 1

        def reranked(c: int):
            def run() -> int:
                q = next_query()
                hits = store.search(q, k=c)[0]
                cand = np.stack([it.vector for it in store.get_many([h.id for h in hits])])
                order, _ = pddm.rerank(q, cand)
                _ = [hits[i] for i in order[:10]]
                return 1
            return run

        def fetch_only(c: int):
            def run() -> int:
                hits = store.search(next_query(), k=c)[0]
                np.stack([it.vector for it in store.get_many([h.id for h in hits])])
                return 1
            return run

        def fetch_one_by_one(c: int):   # what the service did before Store.get_many
            def run() -> int:
                hits = store.search(next_query(), k=c)[0]
                np.stack([store.get(h.id).vector for h in hits])
                return 1
            return run

        cases = {"search_k10": plain}
        for c in cands:
            cases[f"search_k{c}_fetch"] = fetch_only(c)
            cases[f"search_k{c}_fetch_one_by_one"] = fetch_one_by_one(c)
            cases[f"search_k{c}_fetch_rerank"] = reranked(c)
        res = _common.interleaved(cases, rounds=args.rounds, seconds=0.5)
        for k, v in res.items():
            lat[k] = {"ms_per_query_median": round(1000 / v["median"], 3), "ms_per_query_best": round(1000 / v["best"], 3)}
        # the PDDM scoring alone, one query of c candidates
        for c in cands:
            q, cv = vecs[0], vecs[1:c + 1]
            pddm.rerank(q, cv)
            t0, reps = time.perf_counter(), 200
            for _ in range(reps):
                pddm.rerank(q, cv)
            lat[f"pddm_score_only_{c}"] = {"ms_per_query_median": round((time.perf_counter() - t0) / reps * 1000, 3)}
        store.close()

    name = args.name or Path(args.artifact).name.removesuffix(".safetensors")
    out = {"command": _common.command_line(), "machine": _common.machine(), "artifact": art.model_id,
           "dataset": ds.describe(), "threads": args.threads, "quality_queries": int(len(qidx)),
           "quality": quality, "cosine_all_queries_pml": cross,
           "rerank_batch_seconds": {str(k): round(v, 2) for k, v in rerank_seconds.items()}, "latency": lat}
    _common.write_result(f"pddm_rerank_{name}", out)
    for k, v in quality.items():
        print(f"{k:14s} " + "  ".join(f"{m}={x:.4f}" for m, x in v.items()))
    print("cosine, all queries (pml):", {k: round(v, 4) for k, v in cross.items()})
    for k, v in lat.items():
        print(f"{k:28s} {v['ms_per_query_median']:.3f} ms/query")


if __name__ == "__main__":
    main()
