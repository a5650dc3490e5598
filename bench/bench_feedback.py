"""What marking results buys (`like=` / `unlike=`, index.refine_query), simulated on labelled data (run by hand).

A person searches, looks at the first page of k results, marks some, and asks again. Here the person is
simulated from CIFAR-10 (JPEG) labels: a result of the query's class is liked, any other unliked. The
gallery is the first `--gallery-per-class` training images of each class, the queries the first
`--queries-per-class` test images (`--data` for another dataset; or, with `--queries-from train`, the
training images after the gallery's, to choose the weights on), embedded as the service embeds uploads
(`Embedder.preprocess` on the opened JPEG) and searched in a FAISS IndexFlatIP. The second page is
searched with the refined query, the marked items left out (as the service does); its precision@k is set
beside the first search's next page (ranks k+1 to 2k), which is what asking for more without marking
gives. Three ways of marking: every result on the page; one click each way (the first result of the class
liked, the first of another class unliked); likes only; and `--rounds` of it, the marks adding up. And the
weights: the service's (index.LIKE_WEIGHT, UNLIKE_WEIGHT) and a grid around them, and the marks alone with no query (with the service's weights, 2 mean(liked) - mean(unliked):
the "average vector" rule of Qdrant's recommendation API).

    .venv/bin/python bench/bench_feedback.py [--artifact model/weights/hybrid1-cifar10.safetensors] [--tag _s42]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

import index  # noqa: E402
import model  # noqa: E402
from bench._common import SHARED_DATA, command_line, machine, write_result  # noqa: E402
from tests.app._browser import cifar10_images  # noqa: E402

MARKINGS = ("every result", "one click each way", "likes only")


def _marks(page: np.ndarray, relevant: np.ndarray, marking: str) -> tuple[np.ndarray, np.ndarray]:
    like, unlike = page[relevant], page[~relevant]
    if marking == "one click each way":
        return like[:1], unlike[:1]
    if marking == "likes only":
        return like, unlike[:0]
    return like, unlike


def _cifar10_images(_, per_class: int, split: str, skip: int) -> list:
    """(name, label, a function opening it) for CIFAR-10 (JPEG) images: the files' own bytes, as uploaded."""
    return [(name, label, lambda d=data: Image.open(io.BytesIO(d)))
            for name, label, data in cifar10_images(SHARED_DATA, per_class, split=split, skip=skip)]


def _dataset_images(path: str, per_class: int, split: str, skip: int) -> list:
    """The same for any dataset simsearch train reads, from its decoded arrays."""
    from training import load_dataset

    ds = load_dataset(path)
    part = getattr(ds, split)
    labels = part.labels.numpy()
    out = []
    for c, label in enumerate(ds.class_names):
        for i in np.flatnonzero(labels == c)[skip:skip + per_class]:
            arr = part.images[i].numpy()
            pixels = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
            out.append((f"{split}-{i}", label, lambda p=pixels: Image.fromarray(p)))
    return out


def labelled_embeddings(embedder, data: str | None, gallery_per_class: int, queries_per_class: int,
                        queries_from: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery vectors, query vectors, their labels): the first gallery_per_class training images of each class
    of CIFAR-10 (JPEG) or `data`, and the first queries_per_class test images (or, queries_from "train", the
    training images after the gallery's), embedded as the service embeds uploads."""
    def embed(items) -> np.ndarray:
        return embedder.embed_arrays(np.stack([embedder.preprocess(open_image()) for _, _, open_image in items]))

    images = _dataset_images if data else _cifar10_images
    gallery = images(data, gallery_per_class, "train", 0)
    queries = (images(data, queries_per_class, "test", 0) if queries_from == "test" else
               images(data, queries_per_class, "train", gallery_per_class))
    return (embed(gallery), embed(queries), np.array([label for _, label, _ in gallery]),
            np.array([label for _, label, _ in queries]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", default=str(REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"))
    ap.add_argument("--gallery-per-class", type=int, default=1000)
    ap.add_argument("--queries-per-class", type=int, default=100)
    ap.add_argument("--data", default=None,
                    help="another labelled dataset (as for simsearch train: IDX files, an ImageFolder, ...) in place "
                         "of the CIFAR-10 JPEGs, e.g. ../shared/data/fashion-mnist: kinds of image the model never saw")
    ap.add_argument("--queries-from", choices=("test", "train"), default="test",
                    help="train: training images after the gallery's (to choose the weights on, not on the test split)")
    ap.add_argument("-k", type=int, default=10, help="results on a page")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of marking a page and searching again, the marks "
                                                          "adding up as on the search page (3)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = ap.parse_args()
    started, k = time.time(), args.k
    embedder = model.Embedder.from_file(args.artifact, device="cpu")
    G, Q, g_labels, q_labels = labelled_embeddings(embedder, args.data, args.gallery_per_class,
                                                   args.queries_per_class, args.queries_from)
    flat = faiss.IndexFlatIP(embedder.dim)
    flat.add(G)
    _, first = flat.search(Q, 2 * k)
    page, relevant = first[:, :k], g_labels[first[:, :k]] == q_labels[:, None]
    baseline = {"first_page": round(float(relevant.mean()), 4),
                "next_page_unmarked": round(float((g_labels[first[:, k:]] == q_labels[:, None]).mean()), 4)}
    print(f"{embedder.model_id}: gallery {len(G)}, queries {len(Q)}, k {k}: {baseline}")

    def second_page(marking: str, use_query: bool = True, **weights) -> float | None:
        """precision@k of the refined search's page, marked items left out; None when a query has nothing
        to search with under this rule (counted as the unrefined next page instead)."""
        vectors, left_out = [], []
        for qi in range(len(Q)):
            like, unlike = _marks(page[qi], relevant[qi], marking)
            try:
                vectors.append(index.refine_query(Q[qi] if use_query else None, G[like], G[unlike], **weights))
            except ValueError:   # no query and nothing liked: this person gets the next page
                vectors.append(None)
            left_out.append(set(like.tolist()) | set(unlike.tolist()))
        rows = [i for i, v in enumerate(vectors) if v is not None]
        _, found = flat.search(np.stack([vectors[i] for i in rows]), 2 * k) if rows else (None, [])
        hits = np.zeros(len(Q))
        for i, qi in enumerate(rows):
            kept = [f for f in found[i] if f not in left_out[qi]][:k]
            hits[qi] = (g_labels[kept] == q_labels[qi]).mean()
        for qi in set(range(len(Q))) - set(rows):
            hits[qi] = (g_labels[first[qi, k:]] == q_labels[qi]).mean()
        return round(float(hits.mean()), 4)

    def rounds_of(marking: str, seen_left_out: bool = False) -> list[float]:
        """precision@k of the page each round shows: the person marks the page shown, the marks add up (as on
        the search page) and the refined search, marked items left out, shows the next page; with
        seen_left_out, every item shown before is left out too (exclude=), so each page is new."""
        liked, unliked = [set() for _ in Q], [set() for _ in Q]
        seen = [set(row.tolist()) for row in page]
        shown, out = list(page), []
        for _ in range(args.rounds):
            vectors = []
            for qi in range(len(Q)):
                like, unlike = _marks(shown[qi], g_labels[shown[qi]] == q_labels[qi], marking)
                liked[qi] |= set(like.tolist())
                unliked[qi] |= set(unlike.tolist())
                vectors.append(index.refine_query(Q[qi], G[sorted(liked[qi])], G[sorted(unliked[qi])]))
            left_out = [(seen[qi] if seen_left_out else set()) | liked[qi] | unliked[qi] for qi in range(len(Q))]
            _, found = flat.search(np.stack(vectors), k + max(len(x) for x in left_out))
            shown = [np.array([f for f in row if f not in left_out[qi]][:k]) for qi, row in enumerate(found)]
            for qi, row in enumerate(shown):
                seen[qi] |= set(row.tolist())
            out.append(round(float(np.mean([(g_labels[s_] == q_labels[qi]).mean() for qi, s_ in enumerate(shown)])), 4))
        return out

    _, deeper = flat.search(Q, (args.rounds + 1) * k)
    next_pages = [g_labels[deeper[:, r * k:(r + 1) * k]] == q_labels[:, None] for r in range(1, args.rounds + 1)]
    rounds = {"unmarked_next_pages": [round(float(hits.mean()), 4) for hits in next_pages],
              **{marking: rounds_of(marking) for marking in MARKINGS},
              **{f"{marking}, seen left out": rounds_of(marking, True) for marking in MARKINGS}}
    for name, figures in rounds.items():
        print(f"rounds, {name}: {figures}")

    rows = []
    for marking in MARKINGS:
        row = {"marking": marking, "service_weights": second_page(marking),
               "marks_alone_no_query": second_page(marking, use_query=False),
               "grid": {f"like {lw:g}, unlike {uw:g}": second_page(marking, like_weight=lw, unlike_weight=uw)
                        for lw in (0.5, 1.0, 2.0, 4.0) for uw in (0.0, 0.25, 0.5, 1.0, 2.0)}}
        rows.append(row)
        print(f"{marking}: second page p@{k} {row['service_weights']} (next page unmarked "
              f"{baseline['next_page_unmarked']}); the marks alone, no query {row['marks_alone_no_query']}")
    write_result("feedback" + args.tag, {
        "command": command_line(), "machine": machine(), "seconds": round(time.time() - started, 1),
        "artifact": embedder.model_id, "data": args.data or "cifar10-jpeg.tar", "gallery": len(G), "queries": len(Q),
        "queries_from": args.queries_from, "k": k,
        "service_weights": {"like": index.LIKE_WEIGHT, "unlike": index.UNLIKE_WEIGHT},
        "precision_at_k": baseline, "second_page_precision_at_k": rows, "rounds": rounds})


if __name__ == "__main__":
    main()
