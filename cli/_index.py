"""`simsearch index SUBCOMMAND`: build a gallery from images (build), look at it (stats, facets, galleries,
check, duplicates), back it up and delete from it; upload, reembed, copy and edit add their options here from
modules of their own. Searching is cli/_search.py; what they share, cli/_galleries.py.

--data is the data directory, as for `simsearch serve`: the store lives in DATA/index.
"""
from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

from . import _copy, _edit, _galleries as g, _reembed, _restore, _upgrade, _upload
from ._env import ClientEnv
from ._errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or inspect the gallery index")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    b = isub.add_parser("build", help="embed a folder or tar of images into the index (resumable)")
    b.add_argument("source", help="a folder of images (searched recursively) or a .tar/.tar.gz of one; "
                                  "an image's class folder is its label, the class `simsearch train` makes "
                                  "it (ImageFolder: shoes/2023/x.jpg is shoes, train/cat/x.jpg is cat)")
    g.common_options(b, model=True, milvus=True)
    b.add_argument("--index", help="flat (exact, default for a new store), hnsw, ivf, ivfpq, or a FAISS "
                                   "factory string; an existing store keeps its kind unless given")
    b.add_argument("--batch-size", type=int, default=256, help="images embedded and committed together (256)")
    b.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads decoding images (default: CPU count, at most 8)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch and FAISS threads for the model (default: $OMP_NUM_THREADS, else 1, so that the "
                        "decoding workers keep the other cores)")
    b.add_argument("--no-labels", action="store_true", help="do not take labels from folder names")
    b.add_argument("--no-thumbnails", action="store_true", help="do not store a thumbnail with each item")
    b.add_argument("--thumbnail-size", type=int, default=g.THUMB_PX, metavar="PX",
                   help=f"longest side of each stored JPEG thumbnail (default {g.THUMB_PX}, as the service's "
                        "SIMSEARCH_THUMBNAIL_SIZE; a smaller image is kept at its own size, never enlarged; "
                        "0 stores none, as --no-thumbnails)")
    b.add_argument("--metadata", metavar="FILE", help=g.METADATA_HELP)
    b.add_argument("--exif", action="store_true", help=g.EXIF_HELP)
    b.add_argument("--gps", action="store_true", help=g.GPS_HELP)
    b.set_defaults(func=_build)

    s = isub.add_parser("stats", help="count, model, index kind and labels of the index")
    g.common_options(s, model=False, milvus=True)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_stats)

    f = isub.add_parser("facets", help="how the items spread over a label or a metadata key's values, most first",
                        description="Count the items of each value of FIELD (`label`, or `metadata.KEY` for a "
                                    "top-level key of the items' metadata), the most common first, under --label "
                                    "and --where: which albums, sources or years a gallery holds and how many of "
                                    "each (the service's GET /facets). Reads the index without locking it, so it "
                                    "works while the service serves it.")
    f.add_argument("field", metavar="FIELD", help="label, or metadata.KEY (e.g. metadata.album)")
    g.common_options(f, model=False, milvus=True)
    f.add_argument("--label", help="only items with this label")
    f.add_argument("--where", metavar="JSON", help='only items whose metadata matches, e.g. \'{"year": 2024}\'')
    f.add_argument("--limit", type=int, default=100, help="most values printed (100); the rest are counted")
    f.add_argument("--json", action="store_true", help="print JSON (as GET /facets answers)")
    f.set_defaults(func=_facets)

    gl = isub.add_parser("galleries", help="the galleries of a data folder (the default one and named ones), with "
                                           "their sizes and models")
    gl.add_argument("--data", default=g.default_data(), action=g.DataFolder,
                   help="data directory (default $SIMSEARCH_DATA_DIR or ./data)")
    g.milvus_option(gl)
    gl.add_argument("--json", action="store_true", help="print JSON")
    gl.set_defaults(func=_galleries)

    c = isub.add_parser("check", help="look the index over for damage (safe while the service serves it)",
                        description="Read the whole index and report damage: SQLite's quick_check, every item's "
                                    "vector (length, finite, unit norm), label and metadata, the FAISS snapshot's "
                                    "checksum, and with --thumbnails every thumbnail decoded. Reads only, so it is "
                                    "safe while `simsearch serve` runs on DATA. Every gallery of DATA, the "
                                    "default one and the named ones, each with its result, unless --gallery names "
                                    "one. Exit status 1 when anything is damaged.")
    g.common_options(c, model=False)
    c.add_argument("--thumbnails", action="store_true", help="also decode every stored thumbnail (slower)")
    c.set_defaults(func=_check, gallery=None)   # None: every gallery, as backup copies every one

    x = isub.add_parser("duplicates", help="pairs of gallery items that look alike, the most alike first",
                        description="Search the gallery with every one of its own items and print the pairs at "
                                    "least --min-score alike (cosine of their vectors), the most alike first, "
                                    "marking pairs whose labels differ: copies, near-copies (a re-encoded or "
                                    "resized file) and the same picture stored under two labels. Reads only, so it "
                                    "is safe while `simsearch serve` runs on DATA; items written meanwhile may be "
                                    "missed.")
    g.common_options(x, model=False, milvus=True)
    x.add_argument("--min-score", type=float, default=0.98, help="cosine at which two items count as alike (0.98)")
    x.add_argument("-k", type=int, default=5, help="nearest items looked at for each item (5)")
    x.add_argument("--conflicts", action="store_true", help="only pairs whose labels differ")
    x.add_argument("--limit", type=int, default=100, help="pairs to print, the most alike first (100; 0: all)")
    x.add_argument("--json", action="store_true", help="print one JSON object: the settings and every pair")
    x.set_defaults(func=_duplicates)

    k = isub.add_parser("backup", help="copy every gallery, consistently, while the service keeps serving them",
                        description="Copy every gallery of DATA (ids, vectors, labels, metadata, thumbnails), each "
                                    "as it is at one moment, with every write acknowledged before the backup began, "
                                    "into DEST, a new or empty folder outside DATA/index and DATA/galleries, laid out "
                                    "as DATA is: DEST then serves as a --data folder of its own, with the same "
                                    "galleries. Safe while `simsearch serve` runs on DATA. A backup that fails leaves "
                                    "DEST as it was.")
    k.add_argument("dest", help="a new or empty folder; the default gallery goes to DEST/index, a named one to "
                                "DEST/galleries/NAME/index")
    k.add_argument("--data", default=g.default_data(), action=g.DataFolder,
                   help="data directory (default $SIMSEARCH_DATA_DIR or ./data)")
    k.add_argument("--gallery", metavar="NAME",
                   help="back up this gallery alone ('default' for the default one), into its place in DEST "
                        "(DEST/galleries/NAME/index; the default one: DEST/index); with --url, the gallery to "
                        "download (default: the default one)")
    k.add_argument("--url", help="download the backup from a running service instead (GET /galleries/NAME/backup), "
                                 "e.g. http://127.0.0.1:8000: for a service whose disk you cannot reach; one gallery, "
                                 "--gallery, checked before it takes its place in DEST")
    k.add_argument("--api-key", help="with --url: an API key that may write the gallery (default $SIMSEARCH_API_KEY, "
                                     "else the first key of $SIMSEARCH_API_KEY_FILE); a `read` key is refused")
    k.add_argument("--timeout", type=float, default=600,
                   help="with --url: seconds to wait for the answer to begin and between its parts (600)")
    k.set_defaults(func=_backup)

    # commands whose code lives in a module of its own, in the order `simsearch index --help` lists them
    _upload.register_index(isub)
    _reembed.register_index(isub)
    _copy.register_index(isub)
    _edit.register_index(isub)
    _upgrade.register_index(isub)
    _restore.register_index(isub)

    d = isub.add_parser("delete", help="remove items by id, label or metadata filter (asks for --yes)",
                        description="Remove items from the index: the ids given, or every item with --label and/or "
                                    "matching --where. Without --yes, only says how many would go. While "
                                    "`simsearch serve` has the index open, delete over HTTP instead "
                                    "(DELETE /index/{id}, DELETE /index?where=...).")
    d.add_argument("ids", nargs="*", metavar="ID", help="ids of items to remove")
    g.common_options(d, model=False, milvus=True)
    d.add_argument("--label", help="every item with this label")
    d.add_argument("--where", metavar="JSON", help='every item whose metadata matches, e.g. \'{"year": {"$lt": 2020}}\'')
    d.add_argument("--yes", action="store_true", help="delete (otherwise only count what would go)")
    d.set_defaults(func=_delete)


# ---- build -------------------------------------------------------------------------------------


def _decode(data: bytes, embedder, thumb_px: int, exif: bool = False, gps: bool = False):
    """bytes -> (model array, thumbnail JPEG bytes or None, metadata: {width, height} as displayed, and with
    `exif` when and with what it was taken, with `gps` where), for `index build`: the model's array as
    g.model_input makes it and the thumbnail as the service makes one (model.make_thumbnail: upright, alpha on
    white). Each image is decoded once where one decoding gives both: one decoded whole (PNG, WebP, GIF, BMP,
    AVIF), and a JPEG whose drafts for the model and for the thumbnail come out at the same scale and mode (with
    a 32-pixel model and 128-pixel thumbnails: CIFAR's 32x32, a phone's 12 MP, both at 1/8); any other JPEG (a
    640x480 one: 1/8 and 1/2) or a HEIC is decoded a second time, at the thumbnail's own draft scale, as the
    service does, since the model's input must come from its own draft. Runs in worker threads."""
    import model

    with model.open_image(data) as im:
        if im.format in model.DRAFT_FORMATS:
            arr = embedder.preprocess(im, owned=True)   # drafted in place at the model's scale and decoded
            # the size and EXIF before a draft (a draft changes the size), and the thumbnail's own draft
            with model.open_image(data) as header:
                meta = _displayed_metadata(header, exif, gps)
                # from `im` when both drafts decode the same pixels (decoded once), else from `header`, drafted
                thumb = (model.make_thumbnail(model.thumbnail_draft(im, header, thumb_px), thumb_px) if thumb_px
                         else None)
            return arr, thumb, meta
        # decoded whole, once: for the model, for the metadata (a PNG's EXIF may follow its pixels, and Pillow
        # decodes it to look) and for the thumbnail
        im.load()
        arr = embedder.preprocess(im)
        meta = _displayed_metadata(im, exif, gps)
        return arr, model.make_thumbnail(im, thumb_px) if thumb_px else None, meta


def _displayed_metadata(im, exif: bool, gps: bool) -> dict:
    """{width, height} of an opened image as displayed, with `exif` its EXIF's time and camera, with `gps` its
    position (cli/_metadata_file.py)."""
    import model

    width, height = model.displayed_size(im)
    meta = {"width": width, "height": height}
    if exif:
        from ._metadata_file import exif_metadata
        meta.update(exif_metadata(im))
    if gps:
        from ._metadata_file import gps_metadata
        meta.update(gps_metadata(im))
    return meta


def _build(args) -> int:
    g.model_threads(args.threads)

    import logging

    import index

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_build_options(args)
    source = Path(args.source)
    if not source.exists():
        raise CliError(f"source {source} does not exist")
    embedder = g.embedder_for(args.model, args.data, args.gallery, args.milvus_uri)
    images = g.scan(source, not args.no_labels)
    ids = images.ids
    if not ids:
        from model import IMAGE_EXTENSIONS

        raise CliError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
    extra = g.metadata_for(args.metadata, ids)
    store = g.open_store(args.data, False, embedder, args.index, gallery=args.gallery, milvus_uri=args.milvus_uri,
                        locked_hint=". While `simsearch serve` runs on it, add images through the service: "
                                    f"simsearch index upload {shlex.quote(str(args.source))} --url http://HOST:PORT "
                                    "--api-key KEY" + _gallery_arg(args.gallery))
    try:
        done = store.has_ids(ids)  # resume: what an earlier (interrupted) run committed
        todo = [i for i in ids if i not in done]
        print(f"{len(ids)} images in {source}{g.links_note(images.links)}: {len(done)} already indexed, {len(todo)} to "
              f"embed with {embedder.model_id} into {store.info()['path']}")
        kept = len(set(extra) & done)
        if kept:
            print(f"--metadata: {kept} of the images it names are indexed already and keep the metadata they have "
                  f"(`simsearch index edit --metadata {shlex.quote(str(args.metadata))}"
                  f"{_where_args(args.data, args.gallery, args.milvus_uri)}` sets it on them)", file=sys.stderr)
        failed = _index_images(args, todo, images.read, images.is_tar, images.labels, extra, embedder, store)
        info = store.info()
        print(f"indexed {len(todo) - failed} images ({failed} skipped); the index holds {info['count']} "
              f"items ({info['index_kind']})")
    except index.StorageError as exc:  # every batch committed before it is kept: a re-run resumes
        raise CliError(f"{exc}. The images indexed before are kept: free space, then run the same "
                       "command again to go on") from None
    except index.InvalidItemError as exc:   # an item the store refuses: its --metadata too large, ...
        mend = f"mend --metadata {args.metadata}, then " if args.metadata else ""
        raise CliError(f"{exc}. The images indexed before are kept: {mend}run the same command again to go "
                       "on") from None
    finally:
        store.close()
        images.close()
    # 1: not one image of SOURCE could be read. A re-run whose only images left to do are the unreadable
    # ones an earlier run skipped (and reports again) has nothing new to do: 0.
    return 1 if failed and failed == len(todo) and not done else 0


def _check_build_options(args) -> None:
    """`index build`'s refusals of options out of their range, before anything is read."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.thumbnail_size <= 1024:   # the service's bounds for SIMSEARCH_THUMBNAIL_SIZE
        raise CliError(f"--thumbnail-size must be 0 to 1024, got {args.thumbnail_size}")


def _index_images(args, todo: list[str], read: Callable[[str], bytes], sequential: bool,
                  labels: dict[str, str | None], extra: dict[str, dict], embedder, store) -> int:
    """Decode, embed and store the images `todo`, a batch (--batch-size) at a time, each batch committed, with a
    progress bar; the images that cannot be decoded are named and skipped: how many were. `read` gives an image's
    bytes: in this thread when `sequential` (a tar), else in the decoding workers."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    import index
    import model
    from model import unreadable_reason

    thumb_px = 0 if args.no_thumbnails else args.thumbnail_size
    failed = 0

    def work(item):
        id_, data = item
        try:
            with model.exif_notes() as said:   # damaged EXIF: one line naming the file, not Pillow's warning
                decoded = _decode(data, embedder, thumb_px, args.exif, args.gps)
            for why in said:
                tqdm.write(f"{id_}: {model.DAMAGED_EXIF.format(why=why)}", file=sys.stderr)
            return id_, decoded, None
        except Exception as exc:  # a broken file is reported and skipped, not fatal
            return id_, None, unreadable_reason(exc, data)

    with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(todo), unit="img", desc="indexing") as bar:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            # A tar is read sequentially in this thread; decoding fans out to the pool.
            results = list(pool.map(work, [(i, read(i)) for i in chunk])) if sequential else \
                list(pool.map(lambda i: work((i, read(i))), chunk))
            good = [(i, r) for i, r, e in results if e is None]
            for i, _r, e in results:
                if e is not None:
                    failed += 1
                    tqdm.write(f"skipped {i}: {e}")
            if good:
                vecs = embedder.embed_arrays(np.stack([r[0] for _i, r in good]))
                store.upsert([index.Item(id=i, vector=v, label=labels[i], thumbnail=r[1],
                                         metadata={**r[2], **extra.get(i, {})})
                              for (i, r), v in zip(good, vecs, strict=True)])
            bar.update(len(chunk))
    return failed


# ---- stats and search ---------------------------------------------------------------------------

def _stats(args) -> int:
    import json

    import index

    store = g.open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
    try:
        info = store.info()
        counts = store.labels()
        # JSON keys are strings: the unlabelled items are counted apart, not as a label "None"
        info["labels"] = {k: v for k, v in counts.items() if k is not None}
        info["unlabelled"] = counts.get(None, 0)
    finally:
        store.close()
    info["incomplete"] = None if args.milvus_uri else index.incomplete(g.gallery_folder(args.data, args.gallery))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"index     {info['path']}")
    print(f"items     {info['count']}")
    print(f"model     {info['model_id']} (dim {info['dim']})")
    print(f"kind      {info['index']} -> {info['index_kind']}" + (" (exact)" if info["exact"] else ""))
    if "last_seq" in info:   # a Milvus gallery has no sequence or snapshot of its own
        print(f"last seq  {info['last_seq']} (snapshot at {info['snapshot_seq']})")
    if info["labels"] or info["unlabelled"]:
        print("labels")
        width = max((_display_width(k) for k in info["labels"]), default=0)
        for label, n in info["labels"].items():   # padded by the columns a terminal gives it (猫 takes two)
            print(f"  {label}{' ' * (width - _display_width(label))}  {n}")
        if info["unlabelled"]:   # as `index facets label` says it
            print(f"  (no value: {info['unlabelled']})")
    if info["incomplete"]:
        print(f"incomplete: {info['incomplete']}")
    return 0


def _facets(args) -> int:
    import json

    import index

    try:
        index.check_group_by(args.field, "FIELD")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    g.check_label_arg(args.label)
    where = g.where_arg(args.where)
    store = g.open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
    try:
        found = store.facets(args.field, args.label, where)
    except index.InvalidItemError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    shown, others = found.values[:args.limit], sum(n for _, n in found.values[args.limit:])
    if args.json:
        print(json.dumps({"field": args.field, "items": found.items, "values": [{"value": v, "count": n}
                                                                                  for v, n in shown],
                          "distinct": len(found.values), "others": others, "missing": found.missing,
                          "not_scalar": found.not_scalar, "gallery": args.gallery}, indent=2))
        return 0
    print(f"{args.field}: {len(found.values)} value{'' if len(found.values) == 1 else 's'} over {found.items} "
          f"item{'' if found.items == 1 else 's'}")
    rows = [(v if isinstance(v, str) and not _reads_as_json(v) else json.dumps(v), n) for v, n in shown]
    width = max((len(text) for text, _ in rows), default=0)
    for text, n in rows:
        print(f"  {text:<{width}}  {n}")
    for what, n in (("others", others), ("no value", found.missing),
                    ("an object, or a list of no scalar", found.not_scalar)):
        if n:
            print(f"  ({what}: {n})")
    return 0


def _reads_as_json(text: str) -> bool:
    """Whether a string value would print like another JSON value ("2024", "true"): it is then quoted."""
    import json

    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _galleries(args) -> int:
    import json

    import index

    rows = []
    if args.milvus_uri:
        try:
            names = g.milvus_gallery_names(args.milvus_uri)
        except index.StoreError as exc:
            raise CliError(str(exc)) from None
        for name in names:
            try:
                with g.open_milvus(args.milvus_uri, True, None, name) as store:
                    info = store.info()
                rows.append({"name": name, "count": info["count"], "model_id": info["model_id"], "path": info["path"]})
            except CliError as exc:   # dropped this moment
                rows.append({"name": name, "count": None, "model_id": None, "path": str(exc)})
    for name in index.gallery_names(Path(args.data)) if not args.milvus_uri else []:
        try:
            with index.StoreReader(index.gallery_path(Path(args.data), name)) as reader:
                rows.append({"name": name, "count": reader.count(), "model_id": reader.model_id,
                             "path": str(reader.path)})
        except index.StoreError as exc:   # being made, or damaged: said, not fatal
            rows.append({"name": name, "count": None, "model_id": None, "path": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        where = f"--milvus-uri {args.milvus_uri}" if args.milvus_uri else f"--data {args.data}"
        print(f"no galleries in {args.milvus_uri or args.data} (`simsearch index build SOURCE {where}` makes the "
              "default one)")
    for r in rows if not args.json else []:
        print(f"{r['name']:<20} {r['count'] if r['count'] is not None else '?':>9}  {r['model_id'] or ''}  {r['path']}")
    return 0


def _check(args) -> int:
    import index

    if args.gallery is not None:
        return _check_gallery(args, args.gallery)
    names = index.gallery_names(Path(args.data))
    if not names:
        raise CliError(f"no galleries in {args.data} (neither {Path(args.data) / 'index'} nor "
                       f"{Path(args.data) / 'galleries' / 'NAME' / 'index'} holds a store)")
    if len(names) == 1:   # as --gallery: a store that cannot be read at all is exit 2, damage found exit 1
        return _check_gallery(args, names[0])
    damaged, unread = [], []
    for name in names:
        try:
            if _check_gallery(args, name):
                damaged.append(name)
        except CliError as exc:   # one gallery that cannot be read is said; the others are still checked
            print(f"simsearch index check: gallery {name!r} could not be checked: {exc}", file=sys.stderr)
            unread.append(name)
    print(f"checked {len(names)} galleries of {args.data} ({', '.join(names)}): "
          + (f"{len(damaged)} damaged: {', '.join(damaged)}" if damaged else "none damaged" if unread else "all ok")
          + (f"; {len(unread)} could not be read: {', '.join(unread)}" if unread else ""))
    return 2 if unread else 1 if damaged else 0


def _check_gallery(args, gallery: str) -> int:
    """`index check` of one gallery: its notes, damage and result printed; 1 when it is damaged."""
    import index

    path = g.gallery_folder(args.data, gallery)
    try:
        reader = index.StoreReader(path)
    except index.StoreError as exc:
        raise CliError(str(exc)) from None
    with reader:
        found = reader.check()
        if args.thumbnails:
            _check_thumbnails(reader, found)
    for note in found.notes:
        print(f"note: {note}")
    for problem in found.problems:
        print(f"damaged: {problem}")
    checked = f"{found.items} items ({reader.model_id}, dim {reader.dim}) in {path}"
    if found.ok:
        print(f"ok: checked {checked}" + (", thumbnails decoded" if args.thumbnails else ""))
        return 0
    listed = " (first 50 listed)" if found.damaged > len(found.problems) else ""
    # the remedy names the gallery checked: the same id in the default gallery is another, healthy item
    over_http = "DELETE /index/ID" + ("" if gallery == "default" else f"?gallery={gallery}")
    print(f"{found.damaged} problems{listed} in {checked}"
          + f". Damaged items can be deleted (`simsearch index delete ID ...{_where_args(args.data, gallery)} "
          f"--yes`, or {over_http}) and added again from their images; a damaged snapshot is rebuilt by the next "
          "start; for SQLite damage restore a backup (docs/index.md)")
    return 1


def _where_args(data: str, gallery: str = "default", milvus_uri: str | None = None) -> str:
    """The options, with a space before each, that make a printed command act on the same gallery as the one
    running: --data DATA (or --milvus-uri URI) and --gallery NAME for a named gallery, quoted for a shell."""
    where = f" --milvus-uri {shlex.quote(milvus_uri)}" if milvus_uri else f" --data {shlex.quote(str(data))}"
    return where + _gallery_arg(gallery)


def _gallery_arg(gallery: str) -> str:
    return "" if gallery == "default" else f" --gallery {shlex.quote(gallery)}"


def _duplicates(args) -> int:
    import json

    if not 0 < args.min_score <= 1:
        raise CliError(f"--min-score is a cosine in (0, 1], got {args.min_score}")
    if not 1 <= args.k <= 1000:
        raise CliError(f"-k must be 1..1000, got {args.k}")
    if args.limit < 0:
        raise CliError(f"--limit must be 0 (all) or more, got {args.limit}")
    from tqdm import tqdm

    import index

    store = g.open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
    try:
        bar = tqdm(total=store.count(), unit="item", desc="searching", leave=False)   # on stderr
        items, rows = index.find_duplicates(store, args.min_score, args.k, progress=lambda n: bar.update(n - bar.n))
        bar.close()
    finally:
        store.close()
    total, conflicts = len(rows), sum(p["labels_differ"] for p in rows)
    if args.conflicts:
        rows = [p for p in rows if p["labels_differ"]]
    if args.json:
        print(json.dumps({"items": items, "min_score": args.min_score, "k": args.k, "pairs": rows}))
        return 0
    for p in rows[:args.limit or None]:
        print(f"{p['score']:.4f}  {p['a']} ({p['label_a'] or '-'})  {p['b']} ({p['label_b'] or '-'})"
              + ("  labels differ" if p["labels_differ"] else ""))
    shown = "" if not args.limit or len(rows) <= args.limit else f" (the first {args.limit} printed; --limit 0 for all)"
    print(f"{total} pairs at cosine {args.min_score:g} or more among {items} items, {conflicts} of them with "
          f"different labels{shown}")
    return 0


def _check_thumbnails(reader, found) -> None:
    """Add to `found` (index.Check) every stored thumbnail Pillow cannot decode."""
    from PIL import Image

    for id_, data in reader.thumbnails():
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as exc:  # noqa: BLE001  (any decoder failure is damage to report)
            found.add(f"item {id_!r}: its thumbnail does not decode ({type(exc).__name__}: {exc})")


def _backup(args) -> int:
    import index

    if args.url:
        return _backup_by_http(args)
    dest = Path(args.dest)
    names = None
    if args.gallery is not None:
        g.gallery_folder(args.data, args.gallery)  # a name no gallery can have: one line
        names = [args.gallery]
    try:
        copied = index.backup_galleries(Path(args.data), dest, names)
    except index.StoreError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # DEST not writable, disk full: the message names the file
        raise CliError(f"cannot write the copy into {dest}: {exc}") from None
    for c in copied:
        if c.get("deleted"):
            print(f"{c['gallery']}: not copied, deleted while the backup ran")
            continue
        print(f"{c['gallery']}: copied {c['items']} item{'' if c['items'] == 1 else 's'} (model {c['model_id']}, "
              f"up to write {c['last_seq']}, {c['bytes'] / 2 ** 20:.1f} MiB) to {c['path']}")
    done = [c for c in copied if not c.get("deleted")]
    items = sum(c["items"] for c in done)
    print(f"backed up {len(done)} galler{'y' if len(done) == 1 else 'ies'} ({items} item{'' if items == 1 else 's'}) "
          f"into {dest}; serve it with --data {shlex.quote(str(dest))}")
    return 0


def _backup_by_http(args) -> int:
    """`index backup --url URL [--gallery NAME] DEST`: GET /galleries/NAME/backup downloaded into DEST, checked,
    then in its place (DEST/index, DEST/galleries/NAME/index); a download cut off or refused leaves DEST as it
    was."""
    from urllib.parse import quote

    import httpx

    import index

    from . import _http

    name = args.gallery or "default"
    g.gallery_folder(args.data, name)   # a name no gallery can have: one line
    url, dest = args.url.rstrip("/"), Path(args.dest)
    key = ClientEnv.read().write_key(args.api_key)
    said: dict[str, str] = {}

    def download(out) -> dict | None:
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {},
                              timeout=args.timeout) as client:
                r = _http.download(client, f"/galleries/{quote(name, safe='')}/backup", out)
        except httpx.HTTPError as exc:
            raise CliError(f"the backup from {url} did not arrive whole ({type(exc).__name__}: {exc}); nothing "
                           f"was left in {dest}") from None
        if r.status_code != 200:
            raise CliError(_http.fatal(r.status_code, _http.error_message(r), url) + f"; nothing was left in {dest}")
        said.update(r.headers)
        if r.headers.get("x-simsearch-incomplete") != "true":
            return None
        # the service's gallery is a part of its source (a copy into it did not finish): so is this copy of it
        return {"command": "index backup --url", "source": f"gallery {name} of {url}",
                "said": f"it is a backup (`simsearch index backup --url`) of gallery {name!r} of {url}, which the "
                        "service marks incomplete (X-Simsearch-Incomplete: a copy into it did not finish there), so "
                        "it holds a part of its source. Finish that copy on the service (run its `index copy` or "
                        "`index reembed` again), then take the backup again"}

    try:
        got = index.receive_backup(dest, name, download)
    except index.StoreError as exc:
        raise CliError(f"{exc}; nothing was left in {dest}") from None
    except OSError as exc:  # DEST not writable: the message names the file
        raise CliError(f"cannot write the backup into {dest}: {exc}") from None
    if str(got["items"]) != said.get("x-simsearch-items") or str(got["last_seq"]) != said.get("x-simsearch-last-seq"):
        print(f"warning: the service said {said.get('x-simsearch-items')} items up to write "
              f"{said.get('x-simsearch-last-seq')}; the file holds {got['items']} up to write {got['last_seq']}",
              file=sys.stderr)
    if got["incomplete"]:
        print(f"warning: gallery {name!r} is marked incomplete on the service (a copy into it did not finish): "
              f"the backup holds a part of its source, and is marked so in {got['path']} (`index stats`, `index "
              "check` and the service say it)", file=sys.stderr)
    print(f"{name}: downloaded {got['items']} item{'' if got['items'] == 1 else 's'} (model {got['model_id']}, up to "
          f"write {got['last_seq']}, {got['bytes'] / 2 ** 20:.1f} MiB) from {url} to {got['path']}, checked; serve it "
          f"with --data {shlex.quote(str(dest))}")
    return 0


def _display_width(text: str) -> int:
    """The terminal columns `text` takes: two for a wide or full-width character (CJK), none for a combining one."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _delete(args) -> int:
    import index

    g.check_label_arg(args.label)
    where = g.where_arg(args.where)
    if not args.ids and args.label is None and where is None:
        raise CliError("give the ids to delete, or --label and/or --where (it never empties the index)")
    if args.ids and (args.label is not None or where is not None):
        raise CliError("give either ids or --label/--where, not both")
    store = g.open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)  # read-only: counting works while the service runs
    try:
        held = store.has_ids(args.ids) if args.ids else set()
        n = len(held) if args.ids else store.count(args.label, where)
        total, place = store.count(), store.info()["path"]
    finally:
        store.close()
    absent = [i for i in dict.fromkeys(args.ids) if i not in held]
    if absent:   # a mistyped id is said, not passed over as "deleted 0 items"
        names = ", ".join(repr(i) for i in absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        print(f"{len(absent)} of the ids given {'is' if len(absent) == 1 else 'are'} not in {place}: {names}",
              file=sys.stderr)
        if not held:
            return 1
    if not args.yes:
        print(f"would delete {n} of the {total} items in {place}; run again with --yes to delete them")
        return 0
    store = g.open_store(args.data, False, gallery=args.gallery, milvus_uri=args.milvus_uri, locked_hint=". While `simsearch serve` runs, delete over HTTP: "
                                                    "DELETE /index/{id} or DELETE /index?label=...&where=...")
    try:
        gone = store.delete(args.ids) if args.ids else store.delete_where(args.label, where)
    except index.InvalidItemError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    print(f"deleted {len(gone)} item{'' if len(gone) == 1 else 's'}")
    return 0
