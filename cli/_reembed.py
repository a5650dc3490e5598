"""`simsearch index reembed DEST --data DATA --model NEW`: every gallery of DATA (or the one --gallery names)
embedded again by another model, from the thumbnails it stores, into a new index in the same place in DEST
(DEST/index, DEST/galleries/NAME/index), so that DEST serves as DATA did.

The source is only read (a read-only SQLite connection), so the service keeps serving it meanwhile. A
run makes DEST mirror the source as it was when the run began; running again catches up with what the
service wrote since: new and replaced items are embedded, edited ones re-copied, deleted ones removed.
How: DEST/index/reembed.json records the source and `since_seq`, the source's last write when the
last complete run began. Every item the source wrote after it is embedded again; an item written
before it was already copied as it is now (a write gives an item a new seq; only label/metadata
edits keep it, and those are compared).
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from . import _galleries as g
from ._errors import CliError


def register_index(isub) -> None:
    """`simsearch index reembed`'s options (the index command's subparsers call this)."""
    r = isub.add_parser("reembed", help="embed the index again with another model, from its thumbnails, into a new folder",
                        description="Embed every item of every gallery of DATA again with --model, from the "
                                    "thumbnail stored with it, into a new index in the same place in DEST (DEST/index, "
                                    "DEST/galleries/NAME/index; ids, labels, metadata and thumbnails copied, same "
                                    "index kind unless --index), so that DEST serves as DATA did; --gallery NAME: "
                                    "that gallery alone. DATA is only read, so "
                                    "`simsearch serve` can keep serving it meanwhile; run again to catch up with "
                                    "what it wrote since (after stopping it, for an exact copy). Items stored "
                                    "without a thumbnail are reported and left out (exit status 1).")
    r.add_argument("dest", help="a new folder, or one an earlier run of this command filled; the index goes to DEST/index")
    g.common_options(r, model=False)
    r.add_argument("--model", help="the new model's artifact (.safetensors), or the name of a bundled one "
                                   "(`simsearch models` lists them); default: the bundled cifar10 Hybrid-1")
    r.add_argument("--index", help="index kind of the new index (default: the kind DATA's index uses)")
    r.add_argument("--batch-size", type=int, default=256, help="items embedded and committed together (256)")
    r.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads decoding thumbnails (default: CPU count, at most 8)")
    r.add_argument("--threads", type=int, default=None, help="torch and FAISS threads for the model (default 1)")
    r.set_defaults(func=reembed, gallery=None)   # None: every gallery of DATA, as backup copies every one

STATE_NAME = "reembed.json"


def _thumbnail_input(thumbnail: bytes, embedder):
    """A stored thumbnail -> (the model's input, its size). Decoded whole, not at the reduced scale the
    service decodes an upload at: of the two, this vector is the nearer to the service's for the original
    photo (cosine 0.976 against 0.937 at the 5th percentile for 256 px photos; docs/index.md, "Fidelity")."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(thumbnail)) as im:
        im.load()
        return embedder.preprocess(im), im.size


def reembed(args) -> int:
    g.model_threads(args.threads)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")

    import logging

    import index

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if g.gallery_folder(args.dest, "default").resolve() == g.gallery_folder(args.data, "default").resolve():
        raise CliError(f"DEST {args.dest} is the --data folder; re-embed into a new folder, then serve that")
    everyone = index.gallery_names(Path(args.data))
    names = everyone if args.gallery is None else [args.gallery]
    if not names:
        raise CliError(f"--data {args.data}: no store at {Path(args.data) / 'index'} and no gallery in "
                       f"{Path(args.data) / 'galleries'}")
    embedder = g.embedder_from(args.model)
    missed = 0
    for name in names:
        missed += _reembed_gallery(args, name, embedder)
    serve = f"--data {shlex.quote(str(args.dest))}" + (f" --model {shlex.quote(str(args.model))}" if args.model
                                                     else " (the bundled default model)")
    others = [n for n in everyone if n not in names]
    held = (f"{args.dest} holds {'the gallery' if len(names) == 1 else 'the galleries'} of {args.data} "
            f"({', '.join(names)})" if not others else
            f"{args.dest} holds gallery {names[0]!r} of {args.data} only, not {', '.join(others)} (without "
            "--gallery every gallery is re-embedded)")
    print(f"{held}. Serve it with {serve}; run this again to catch up with writes made to the source meanwhile")
    return 1 if missed else 0


def _reembed_gallery(args, gallery: str, embedder) -> int:
    """Re-embed one gallery of DATA into its place in DEST; 1 when items were left out, else 0."""
    import index

    source, dest = g.gallery_folder(args.data, gallery), g.gallery_folder(args.dest, gallery)
    try:
        reader = index.StoreReader(source)
    except index.StoreError as exc:
        raise CliError(f"--data {args.data}: {exc}") from None
    try:
        if reader.model_id == embedder.model_id:
            raise CliError(f"the index at {source} already holds vectors of {embedder.model_id}; "
                           "give --model the artifact to re-embed with")
        state = _read_state(dest, source)
        store = g.open_store(args.dest, False, embedder, args.index or (None if state else reader.index_spec),
                            gallery=gallery,
                            locked_hint=f". Stop the service serving {args.dest} first")
        try:
            return _copy(args, gallery, reader, store, state, dest, source, embedder)
        except index.StorageError as exc:  # what was copied is kept: the next run goes on from there
            raise CliError(f"{exc}. What was copied is kept: free space, then run the same command "
                           "again to go on") from None
        finally:
            store.close()
    finally:
        reader.close()


def _read_state(dest: Path, source: Path) -> dict | None:
    """DEST's record of an earlier run, or None for a new DEST; CliError when DEST holds another store."""
    path = dest / STATE_NAME
    if not path.exists():
        if (dest / "store.sqlite3").exists():
            raise CliError(f"{dest} holds an index that `index reembed` did not make; give a new or empty folder")
        return None
    try:
        state = json.loads(path.read_text())
        have = state["source"]
        int(state["since_seq"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is unreadable ({exc}); re-embed into a new folder") from None
    if have != str(source.resolve()):
        raise CliError(f"{dest} is a re-embedding of {have}, not of {source.resolve()}")
    return state


def _write_state(dest: Path, state: dict) -> None:
    part = dest / (STATE_NAME + ".part")
    part.write_text(json.dumps(state, indent=2) + "\n")
    part.replace(dest / STATE_NAME)


def _copy(args, gallery: str, reader, store, state: dict | None, dest: Path, source: Path, embedder) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    import index

    last_seq, rows = reader.rows()
    if state is None:  # recorded before anything is copied: an interrupted first run resumes from it
        state = {"source": str(source.resolve()), "source_model": reader.model_id, "since_seq": last_seq}
        _write_state(dest, state)
    since = int(state["since_seq"])
    index.mark_incomplete(dest, "index reembed", str(source))   # until this run has caught up: said if cut off
    with index.StoreReader(dest) as own:
        _, have = own.rows()
    gone = [i for i in have if i not in rows]
    todo = [i for i, r in rows.items() if i not in have or r.seq > since or _edited(r, have[i])]
    print(f"{len(rows)} items in {source} ({reader.model_id}): {len(todo)} to embed with {embedder.model_id}, "
          f"{len(rows) - len(todo)} already copied, {len(gone)} to remove from {dest}")
    if gone:
        store.delete(gone)

    left_out: dict[str, list[str]] = {"no thumbnail": [], "unreadable thumbnail": [], "refused by DEST": []}
    small = 0

    def work(item):
        try:
            return item, _thumbnail_input(item.thumbnail, embedder), None
        except Exception as exc:  # noqa: BLE001  (a thumbnail Pillow cannot read: reported, not fatal)
            return item, None, exc

    with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(todo), unit="img", desc="re-embedding") as bar:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            items = [it for it in reader.items(chunk) if it is not None]  # None: deleted since the listing
            left_out["no thumbnail"] += [it.id for it in items if it.thumbnail is None]
            good = []
            for item, decoded, exc in pool.map(work, [it for it in items if it.thumbnail is not None]):
                if exc is not None:
                    left_out["unreadable thumbnail"].append(item.id)
                    tqdm.write(f"skipped {item.id}: {type(exc).__name__}: {exc}")
                else:
                    good.append((item, decoded[0]))
                    small += max(decoded[1]) < embedder.meta.image_size
            if good:
                vecs = embedder.embed_arrays(np.stack([arr for _, arr in good]))
                _upsert(store, [index.Item(id=it.id, vector=v, label=it.label, metadata=it.metadata,
                                           thumbnail=it.thumbnail) for (it, _), v in zip(good, vecs, strict=True)],
                        left_out["refused by DEST"])
            bar.update(len(chunk))

    missed = [i for ids in left_out.values() for i in ids]
    if missed:  # an older copy of an item that could not be embedded now must not stay in DEST
        store.delete(missed)
    state["since_seq"] = last_seq
    _write_state(dest, state)
    index.clear_incomplete(dest)
    count = store.count()
    print(f"re-embedded {len(todo) - len(missed)} items; {dest} holds {count} items of {embedder.model_id}")
    if small:
        print(f"note: {small} thumbnails were smaller than the model's input ({embedder.meta.image_size} px): "
              "their vectors come from upscaled thumbnails, not from the originals")
    for why, ids in left_out.items():
        if ids and why == "refused by DEST":
            print(f"not copied, {why}: {len(ids)} items (first: {', '.join(ids[:3])}); each reason is above: "
                  "change those items in the source (`simsearch index edit` or PATCH /index/ID) and run this again")
        elif ids:
            print(f"not copied, {why}: {len(ids)} items (first: {', '.join(ids[:3])}); add them from their "
                  f"original images with `simsearch index build SOURCE --data {shlex.quote(str(args.dest))}"
                  f"{'' if gallery == 'default' else ' --gallery ' + shlex.quote(gallery)} --model ...`")
    return 1 if missed else 0


def _upsert(store, items: list, refused: list[str]) -> None:
    """Write a batch; when DEST refuses it, each item alone, the refused ones named with the reason. An item
    stored long ago may hold what a write no longer takes (a metadata key beginning with '$', refused since the
    forty-ninth session): it must not stop the whole copy."""
    import index
    from tqdm import tqdm

    try:
        store.upsert(items)
        return
    except index.InvalidItemError:
        pass
    for item in items:
        try:
            store.upsert([item])
        except index.InvalidItemError as exc:
            refused.append(item.id)
            tqdm.write(f"skipped {item.id}: {exc}")


def _edited(row, have) -> bool:
    """Label or metadata changed in place (an edit keeps the seq); the JSON is compared parsed, so that
    two spellings of the same metadata are not a change."""
    if row.label != have.label:
        return True
    return row.metadata_json != have.metadata_json and json.loads(row.metadata_json) != json.loads(have.metadata_json)
