"""What searching with several photos at once buys (`POST /search` with several `file` parts: one query, the
unit mean of their embeddings), on labelled data (run by hand).

A person has n photos of the kind of thing they want and sends them together. Simulated from CIFAR-10
(JPEG) labels: the gallery is the first `--gallery-per-class` training images of each class, the queries
the first `--queries-per-class` test images (`--data` for another dataset), embedded as the service embeds
uploads (`Embedder.preprocess` on the opened image) and searched in a FAISS IndexFlatIP. Each query is sent
alone, and with n - 1 other test images of its class drawn at random (seeded): the precision@1 and
precision@k of the class, for n = 1, 2, 3, 5. And, for what the mean is set against, the same photos
searched one by one with their answers merged (each item at its best score over the photos; what a
client that cannot combine would do).

    .venv/bin/python bench/bench_multi_query.py [--artifact model/weights/hybrid1-cifar10.safetensors] [--tag _s44]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

import model  # noqa: E402
from bench._common import command_line, machine, write_result  # noqa: E402
from bench.bench_feedback import labelled_embeddings  # noqa: E402

PHOTOS = (1, 2, 3, 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", default=str(REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"))
    ap.add_argument("--gallery-per-class", type=int, default=1000)
    ap.add_argument("--queries-per-class", type=int, default=100)
    ap.add_argument("--data", default=None, help="another labelled dataset (as for simsearch train) in place of the "
                                                 "CIFAR-10 JPEGs, e.g. ../shared/data/fashion-mnist")
    ap.add_argument("-k", type=int, default=10, help="results on a page")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = ap.parse_args()
    started, k = time.time(), args.k
    embedder = model.Embedder.from_file(args.artifact, device="cpu")
    G, Q, g_labels, q_labels = labelled_embeddings(embedder, args.data, args.gallery_per_class,
                                                   args.queries_per_class)
    flat = faiss.IndexFlatIP(embedder.dim)
    flat.add(G)
    rng = np.random.default_rng(args.seed)
    results = {}
    for n in PHOTOS:
        sets = []
        for i in range(len(Q)):
            same = np.flatnonzero(q_labels == q_labels[i])
            sets.append([i, *rng.choice(same[same != i], n - 1, replace=False).tolist()])
        mean = np.stack([Q[s].mean(axis=0) for s in sets])
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        _, found = flat.search(mean.astype(np.float32), k)
        relevant = g_labels[found] == q_labels[:, None]
        row = {"mean": {"p@1": round(float(relevant[:, 0].mean()), 4), f"p@{k}": round(float(relevant.mean()), 4)}}
        if n > 1:   # each photo searched alone, the answers merged: every item at its best score
            scores, ids = flat.search(Q, k)
            merged = []
            for s in sets:
                best: dict[int, float] = {}
                for j in s:
                    for f, sc in zip(ids[j].tolist(), scores[j].tolist(), strict=True):
                        best[f] = max(best.get(f, -2.0), sc)
                merged.append([f for f, _ in sorted(best.items(), key=lambda fs: -fs[1])[:k]])
            rel = np.array([g_labels[m] == q_labels[i] for i, m in enumerate(merged)])
            row["merged"] = {"p@1": round(float(rel[:, 0].mean()), 4), f"p@{k}": round(float(rel.mean()), 4)}
        results[f"{n} photo{'s' if n > 1 else ''}"] = row
        print(f"{n}: {row}", flush=True)
    write_result("multi_query" + args.tag, {
        "command": command_line(), "machine": machine(), "seconds": round(time.time() - started, 1),
        "artifact": embedder.model_id, "data": args.data or "CIFAR-10 (JPEG)", "gallery": len(G), "queries": len(Q),
        "k": k, "seed": args.seed, "results": results})


if __name__ == "__main__":
    main()
