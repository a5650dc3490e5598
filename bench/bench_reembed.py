"""Re-embedding an index from its thumbnails (`simsearch index reembed`) against indexing the originals
again with the new model (`simsearch index build`): time, and what the thumbnails cost in quality.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_reembed.py [--gallery 10000] [--queries 1000]
        [--enlarge 8] [--old ARTIFACT] [--new ARTIFACT] [--tag _NAME]

The gallery: --gallery CIFAR-10 (JPEG) test images (a tenth of each class) in class folders, written as they are
(32x32) or, with --enlarge F, enlarged F times and saved as JPEG quality 90 (originals larger than
the thumbnails `index build` stores, 96 px when this was measured, 128 px since 2026-12-05, as users'
photos are). It is indexed with --old (the
bundled default), re-embedded from the thumbnails with --new (default `hybrid1-res-cifar10`), and
indexed again from the originals with --new: the reference. Reported: the images/s of both, the
cosine between each item's two --new vectors (and, beside it, what the thumbnail would give decoded at
the reduced scale the service decodes an upload at, which reembed does not do), and, for --queries CIFAR-10 training images (also a
tenth of each class) embedded
with --new, precision@1 and @10 by label in both indexes and how many of the ten nearest they share.
All three commands run as subprocesses, as a user runs them, one after the other.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

SIMSEARCH = str(_common.REPO / ".venv" / "bin" / "simsearch")


def cifar(split: str, n: int) -> list[tuple[str, str, bytes]]:
    """n CIFAR-10 (JPEG) images of a split, the first n/10 of each class, as (class, file name, bytes)."""
    out, per_class = [], {}
    with tarfile.open(_common.SHARED_DATA / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == split and per_class.get(parts[2], 0) < n // 10:
                per_class[parts[2]] = per_class.get(parts[2], 0) + 1
                out.append((parts[2], parts[3], tar.extractfile(m).read()))
    return out


def write_gallery(images, folder: Path, enlarge: int) -> None:
    from PIL import Image

    for label, name, data in images:
        (folder / label).mkdir(parents=True, exist_ok=True)
        if enlarge > 1:
            im = Image.open(io.BytesIO(data)).convert("RGB")
            im.resize((im.width * enlarge, im.height * enlarge), Image.BICUBIC).save(folder / label / name, "JPEG",
                                                                                      quality=90)
        else:
            (folder / label / name).write_bytes(data)


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([SIMSEARCH, *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def vectors(data: Path) -> tuple[list[str], np.ndarray]:
    import index

    with index.StoreReader(data / "index") as reader:
        _, rows = reader.rows()
        ids = sorted(rows)
        return ids, np.stack([it.vector for it in reader.items(ids, thumbnails=False)])


def main() -> None:
    from PIL import Image

    import faiss
    import index
    import model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--enlarge", type=int, default=1)
    ap.add_argument("--old", default="model/weights/hybrid1-cifar10.safetensors")
    ap.add_argument("--new", default="model/weights/hybrid1-res-cifar10.safetensors")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-reembed-") as tmp:
        tmp = Path(tmp)
        write_gallery(cifar("test", args.gallery), tmp / "gallery", args.enlarge)
        build_old = timed("index", "build", str(tmp / "gallery"), "--data", str(tmp / "old"), "--model", args.old)
        reembed = timed("index", "reembed", str(tmp / "thumbs"), "--data", str(tmp / "old"), "--model", args.new)
        build_new = timed("index", "build", str(tmp / "gallery"), "--data", str(tmp / "originals"), "--model", args.new)
        ids, from_thumbs = vectors(tmp / "thumbs")
        ids_ref, from_originals = vectors(tmp / "originals")
        # reembed decodes a thumbnail whole; what the other choice, the reduced scale of an upload, would give
        embedder = model.Embedder.from_file(args.new, device="cpu")
        with index.StoreReader(tmp / "old" / "index") as reader:
            drafted = embedder.embed([Image.open(io.BytesIO(it.thumbnail)) for it in reader.items(ids)])
    assert ids == ids_ref, "the two indexes hold different items"
    cosine = (from_thumbs * from_originals).sum(1)
    cosine_drafted = (drafted * from_originals).sum(1)
    labels = np.array([i.split("/")[0] for i in ids])

    queries = cifar("train", args.queries)
    q = embedder.embed([Image.open(io.BytesIO(data)) for _, _, data in queries])
    q_labels = np.array([label for label, _, _ in queries])
    found = {}
    for name, vecs in (("thumbnails", from_thumbs), ("originals", from_originals)):
        flat = faiss.IndexFlatIP(vecs.shape[1])
        flat.add(vecs)
        found[name] = flat.search(q, 10)[1]
    quality = {name: {"precision_at_1": round(float((labels[nn[:, 0]] == q_labels).mean()), 4),
                      "precision_at_10": round(float((labels[nn] == q_labels[:, None]).mean()), 4)}
               for name, nn in found.items()}
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found["thumbnails"], found["originals"], strict=True)])
    n = len(ids)
    result = {
        "command": _common.command_line(), "machine": _common.machine(), "gallery": n,
        "originals": f"{32 * args.enlarge}x{32 * args.enlarge} JPEG" + (" (q90)" if args.enlarge > 1 else " (as in the tar)"),
        "old_model": args.old, "new_model": args.new, "queries": len(queries),
        "seconds": {"index build --old": round(build_old, 2), "index reembed --new": round(reembed, 2),
                    "index build --new": round(build_new, 2)},
        "images_per_s": {"index reembed": round(n / reembed), "index build": round(n / build_new)},
        "reembed_over_build": round(build_new / reembed, 2),
        "cosine_thumbnail_vs_original": {f"p{p}": round(float(np.percentile(cosine, p)), 4) for p in (0, 1, 5, 50)},
        "cosine_thumbnail_at_upload_scale_vs_original": {f"p{p}": round(float(np.percentile(cosine_drafted, p)), 4)
                                                         for p in (0, 1, 5, 50)},
        "quality": quality, "top10_shared": round(float(shared), 4),
    }
    print(result["images_per_s"], result["cosine_thumbnail_vs_original"],
          result["cosine_thumbnail_at_upload_scale_vs_original"], quality, result["top10_shared"])
    _common.write_result("reembed" + args.tag, result)


if __name__ == "__main__":
    main()
