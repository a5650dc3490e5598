"""Grouped search (`group_by=`, index.search_grouped): what a page of 10 holds with it and without, and what it
costs (run by hand).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_groups.py [--products 2000] [--queries 500] [--tag _s43]

A shop's gallery: --products CIFAR-10 (JPEG) test images (a tenth of each class), each a product
photographed 5 ways (the picture, and 4 of bench_copies' edits: mirrored, cropped 28/32, 20 % brighter,
rotated 5 degrees), stored in a real index.Store (FAISS flat, exact) with metadata {"product": n} and the
image's class as label.
The queries: --queries of the products as a customer's photo (the 5th edit, JPEG quality 30, never in
the gallery). For a page of k=10, plain and grouped by product (group_by=metadata.product): how many
distinct products it shows, how often the query's product is first, and how often it is on the page at
all. Then the cost of each search, one query at a time and 32 at a time, in the same run (interleaved):
plain k=10; by product, group_size 1 and 3; by label (10 labels: the tenth can lie deep); and how many
pages of nearest items each grouped search read; and, for where that time goes, the Store's search of
10 to 16,384 items beside FAISS's own search of the same vectors. Each grouped case twice: the Store's own
grouped search (Store.search_grouped, what the service runs) and index.search_grouped over Store.search
(a hit made of every item read; what MilvusStore runs, and the Store ran before the 44th session).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from bench_copies import edits  # noqa: E402

sys.path.insert(0, str(_common.REPO))
from tests.app._browser import cifar10_images  # noqa: E402

VIEWS = ("mirrored", "crop 28/32", "brighter 20%", "rotated 5 deg")
QUERY_VIEW = "jpeg q30"
K = 10


def main() -> None:
    from PIL import Image

    import index
    import model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=str(_common.REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"))
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    started = time.time()
    embedder = model.Embedder.from_file(args.artifact, device="cpu")
    photos = cifar10_images(_common.SHARED_DATA, args.products // 10)   # the first of each class
    labels = [label for _, label, _ in photos]
    originals = [Image.open(io.BytesIO(data)).convert("RGB") for _, _, data in photos]
    edit = edits()
    items = []
    for n, im in enumerate(originals):
        views = [im] + [edit[v](im) for v in VIEWS]
        for v, vec in enumerate(embedder.embed(views)):
            items.append(index.Item(f"p{n}/v{v}", vec, label=labels[n], metadata={"product": n}))
    chosen = np.linspace(0, len(originals) - 1, args.queries).astype(int)
    Q = embedder.embed([edit[QUERY_VIEW](originals[i]) for i in chosen])
    print(f"{embedder.model_id}: {len(items)} gallery items ({args.products} products x 5), {len(Q)} queries",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = index.Store.open(index.StoreConfig(Path(tmp) / "store", dim=embedder.dim, model_id=embedder.model_id,
                                                   snapshot_every=0))
        try:
            store.upsert(items)
            result = _study(store, np.stack([it.vector for it in items]), Q, chosen)
        finally:
            store.close()
    _common.write_result("groups" + args.tag, {
        "command": _common.command_line(), "machine": _common.machine(), "seconds": round(time.time() - started, 1),
        "artifact": embedder.model_id, "gallery": len(items), "products": args.products, "views": ["picture", *VIEWS],
        "query_view": QUERY_VIEW, "queries": len(Q), "k": K, **result})


def _study(store, gallery: np.ndarray, Q: np.ndarray, chosen: np.ndarray) -> dict:
    import index

    pages: list[int] = []

    def search(v, n):
        pages.append(n)
        return store.search(v, k=n)

    def product(h) -> int:
        return h.metadata["product"]

    plain = store.search(Q, k=K)
    grouped = store.search_grouped(Q, K, "metadata.product")
    over = index.search_grouped(search, Q, K, "metadata.product")
    assert [[h.id for h in a] for a in grouped] == [[h.id for h in a] for a in over], "the two ways differ"
    page = {}
    for name, answers in (("plain", plain), ("by product", grouped)):
        page[name] = {
            "distinct_products_on_the_page": round(float(np.mean([len({product(h) for h in a}) for a in answers])), 3),
            "query_product_first": round(float(np.mean([product(a[0]) == p
                                                        for a, p in zip(answers, chosen, strict=True)])), 4),
            "query_product_on_the_page": round(float(np.mean([p in {product(h) for h in a}
                                                              for a, p in zip(answers, chosen, strict=True)])), 4),
            "distinct_labels_on_the_page": round(float(np.mean([len({h.label for h in a}) for a in answers])), 3)}
        print(f"{name}: {page[name]}", flush=True)

    cases, read = {}, {}
    for name, group_by, size in (("plain k=10", None, 1), ("by product, group_size 1", "metadata.product", 1),
                                 ("by product, group_size 3", "metadata.product", 3), ("by label", "label", 1)):
        for batch in (1, 32):
            rows = [Q[i:i + batch] for i in range(0, len(Q) - batch + 1, batch)]
            at = iter(range(10**9))

            def one(rows=rows, at=at, group_by=group_by, size=size) -> int:
                q = rows[next(at) % len(rows)]
                if group_by is None:
                    store.search(q, k=K)
                else:
                    store.search_grouped(q, K, group_by, size)
                return len(q)

            def over_search(rows=rows, at=at, group_by=group_by, size=size) -> int:
                q = rows[next(at) % len(rows)]
                index.search_grouped(lambda v, n: store.search(v, k=n), q, K, group_by, size)
                return len(q)
            cases[f"{name}, batch {batch}"] = one
            if group_by is not None:
                cases[f"{name}, batch {batch}, over Store.search"] = over_search
        if group_by is not None:
            pages.clear()
            for q in Q:
                index.search_grouped(search, q[None], K, group_by, size)
            read[name] = {"searches_a_query": round(len(pages) / len(Q), 3), "largest_page": max(pages),
                          "items_read_a_query": round(sum(pages) / len(Q), 1)}
            print(f"{name}: {read[name]}", flush=True)
    # where a deep read's time goes: the Store's search of n items beside FAISS's own search of the same vectors
    import faiss

    flat = faiss.IndexFlatIP(Q.shape[1])
    flat.add(gallery)
    for n in (10, 64, 1024, 16384):
        cases[f"Store.search, k={n}"] = lambda n=n: len(store.search(Q[:1], k=n))
        cases[f"FAISS IndexFlatIP.search, k={n}"] = lambda n=n: len(flat.search(Q[:1], min(n, flat.ntotal))[0])
    speed = _common.interleaved(cases, rounds=5, seconds=0.5)
    timing = {name: {"queries_per_s_median": round(r["median"], 1),
                     "ms_a_query_median": round(1000 / r["median"], 3),
                     "queries_per_s_rounds": r["rounds"]} for name, r in speed.items()}
    for name, t in timing.items():
        print(f"{name}: {t['queries_per_s_median']} queries/s, {t['ms_a_query_median']} ms a query", flush=True)
    return {"page_of_10": page, "pages_read": read, "timing": timing}


if __name__ == "__main__":
    main()
