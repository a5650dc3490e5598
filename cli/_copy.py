"""`simsearch index copy`: a gallery copied whole, with its vectors (nothing is embedded again), between
a data folder and Milvus either way, or folder to folder, or Milvus to Milvus.

What moves a gallery from one machine's folder to a Milvus server when the service scales out, and what
takes a copy of a gallery in Milvus into a folder (a backup that `simsearch serve --data` serves). Each
item keeps its id, vector, label, metadata and thumbnail, and the items keep their listing order. The
source is only read, so a service can keep serving it; the copy holds the items the source listed when
the copy began, each as it was when its batch was read (one deleted meanwhile is left out).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import _galleries as g
from ._errors import CliError


def register_index(isub) -> None:
    """`simsearch index copy`'s options (the index command's subparsers call this)."""
    y = isub.add_parser("copy", help="copy a gallery with its vectors: folder to Milvus, Milvus to folder, or alike",
                        description="Copy the gallery of --data (or --milvus-uri) into --to-data or --to-milvus-uri: "
                                    "every item's id, vector, label, metadata and thumbnail, in listing order, "
                                    "nothing embedded again (the destination is for the same model). The source is "
                                    "only read, so a service can keep serving it; stop its writes first for an exact "
                                    "copy. Items the destination holds already are replaced by the source's, others "
                                    "it holds are kept. A copy cut off is run again (it writes every item again). "
                                    "Exit status 1 when an item could not be copied exactly (each is named: Milvus "
                                    "holds smaller thumbnails, labels and metadata than a folder).")
    g.common_options(y, model=False, milvus=True)
    y.add_argument("--to-data", metavar="FOLDER", help="the destination: a data folder (its DATA/index, or "
                                                       "DATA/galleries/NAME/index)")
    y.add_argument("--to-milvus-uri", metavar="URI", help="the destination: a Milvus server (http://HOST:19530) or a "
                                                          "Milvus Lite file (.db); credentials and database as for "
                                                          "--milvus-uri")
    y.add_argument("--to-gallery", metavar="NAME", help="the destination gallery's name (default: the source's)")
    y.add_argument("--all", action="store_true", help="copy every gallery of the source, each under its own name")
    y.add_argument("--index", help="index kind of a new destination (default: the source's; flat when Milvus "
                                   "does not build it)")
    y.add_argument("--batch-size", type=int, default=1000, help="items read and written together (1000)")
    y.set_defaults(func=copy)

_MILVUS_KINDS = ("flat", "hnsw", "ivf")


@dataclass
class _Source:
    """One gallery to read: its ids in listing order, how to read items, and what made its vectors."""

    where: str
    ids: list[str]
    read: Callable[[list[str]], list]
    dim: int
    model_id: str
    kind: str
    close: Callable[[], None]


def copy(args) -> int:
    """Copy the gallery (or with --all every gallery) of --data / --milvus-uri into --to-data /
    --to-milvus-uri. Exit status 1 when an item could not be copied exactly (each is named)."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.to_data is None) == (args.to_milvus_uri is None):
        raise CliError("give the destination: --to-data FOLDER or --to-milvus-uri URI (one of them)")
    if args.all and (args.gallery != "default" or args.to_gallery is not None):
        raise CliError("--all copies every gallery under its own name: give it without --gallery and --to-gallery")
    for option, name in (("--gallery", args.gallery), ("--to-gallery", args.to_gallery)):
        if name is not None:   # said against the option it was given with, before anything is opened
            _check_name(option, name)
    names = _gallery_names(args) if args.all else [args.gallery]
    if not names:
        raise CliError(f"no galleries in {args.milvus_uri or args.data} to copy")
    status = 0
    for name in names:
        status |= _copy_gallery(args, name, args.to_gallery or name)
    return status


def _check_name(option: str, name: str) -> None:
    import index

    try:
        index.check_gallery_name(name)
    except index.InvalidItemError as exc:
        raise CliError(f"{option}: {exc}") from None


def _gallery_names(args) -> list[str]:
    import index

    if args.milvus_uri:
        return g.milvus_gallery_names(args.milvus_uri)
    return index.gallery_names(Path(args.data))


def _open_source(args, gallery: str) -> _Source:
    import index

    if args.milvus_uri:
        store = g.open_milvus(args.milvus_uri, True, None, gallery)
        return _Source(store.info()["path"], store.ids(), store.items, store.dim, store.model_id, store.spec,
                       store.close)
    path = g.gallery_folder(args.data, gallery)
    if not (path / "store.sqlite3").exists():
        raise CliError(f"no index at {path} to copy")
    try:
        reader = index.StoreReader(path)
    except index.StoreError as exc:
        raise CliError(f"--data {args.data}: {exc}") from None
    _, rows = reader.rows()   # one read: every item the source held at this moment, in listing order
    return _Source(str(path), list(rows), reader.items, reader.dim, reader.model_id, reader.index_spec, reader.close)


def _same_place(args, gallery: str, to_gallery: str) -> bool:
    if gallery != to_gallery:
        return False
    if args.milvus_uri and args.to_milvus_uri:
        return args.milvus_uri.rstrip("/") == args.to_milvus_uri.rstrip("/")
    if not args.milvus_uri and args.to_data:
        return g.gallery_folder(args.data, gallery).resolve() == g.gallery_folder(args.to_data, gallery).resolve()
    return False


def _destination_exists(args, gallery: str) -> bool:
    if args.to_milvus_uri:
        return gallery in g.milvus_gallery_names(args.to_milvus_uri)
    return (g.gallery_folder(args.to_data, gallery) / "store.sqlite3").exists()


def _copy_gallery(args, gallery: str, to_gallery: str) -> int:
    from tqdm import tqdm

    import index

    if _same_place(args, gallery, to_gallery):
        raise CliError(f"the source and the destination are the same gallery ({gallery!r}); copy into another")
    source = _open_source(args, gallery)
    try:
        kind = args.index
        if kind is None and not _destination_exists(args, to_gallery):   # a new one: the source's kind
            kind = source.kind
            if args.to_milvus_uri and kind not in _MILVUS_KINDS:
                print(f"note: Milvus does not build the source's index kind {kind!r}: the copy is flat (exact); "
                      "give --index hnsw or ivf for an approximate one")
                kind = "flat"
        dest = g.open_store(args.to_data or "", False, kind=kind, gallery=to_gallery, milvus_uri=args.to_milvus_uri,
                           vectors=(source.dim, source.model_id),
                           locked_hint=f". Stop the service serving {args.to_data} first, or copy into another folder")
        where = dest.info()["path"]
        folder = None if args.to_milvus_uri else g.gallery_folder(args.to_data, to_gallery)
        if folder is not None:   # a copy cut off leaves a store that says so (index stats, check, serve)
            index.mark_incomplete(folder, "index copy", source.where)
        copied, bare, left_out = 0, [], []
        try:
            with tqdm(total=len(source.ids), unit="item", desc=f"copying {gallery}") as bar:
                for start in range(0, len(source.ids), args.batch_size):
                    chunk = source.ids[start:start + args.batch_size]
                    items = [it for it in source.read(chunk) if it is not None]   # None: deleted since the listing
                    copied += _write(dest, items, bare, left_out)
                    bar.update(len(chunk))
            dest.snapshot()   # a folder: its FAISS snapshot now; Milvus: its rows sealed, for fast searches
            count = dest.count()
            if folder is not None:
                index.clear_incomplete(folder)
        except index.StorageError as exc:
            raise CliError(f"{exc}. What was copied is kept: free space, then run the same command again") from None
        finally:
            dest.close()
    finally:
        source.close()
    serve = (f"--milvus-uri {args.to_milvus_uri}" if args.to_milvus_uri
             else f"--data {shlex.quote(str(args.to_data))}") + \
        ("" if to_gallery == "default" else f" (gallery {to_gallery})")
    more = f", {count - copied} of them held before and kept" if count > copied else ""
    print(f"copied {copied} of the {len(source.ids)} items of {source.where} ({source.model_id}) to {where}; "
          f"it holds {count} items{more}. Serve it with {serve} and the model {source.model_id}")
    for id_, why in bare:
        print(f"copied without its thumbnail: {id_!r} ({why})")
    for id_, why in left_out:
        print(f"not copied: {id_!r} ({why})")
    return 1 if bare or left_out else 0


def _write(dest, items: list, bare: list, left_out: list) -> int:
    """Upsert items into dest; when the batch is refused, each alone, then without its thumbnail (Milvus
    holds smaller ones than a folder), then left out: the refusals go to `bare` and `left_out` with the
    reason. Returns how many were written."""
    import index

    try:
        return dest.upsert(items) if items else 0
    except index.InvalidItemError:
        pass
    written = 0
    for item in items:
        try:
            written += dest.upsert([item])
            continue
        except index.InvalidItemError as exc:
            why = str(exc)
        if item.thumbnail is not None:
            try:
                written += dest.upsert([replace(item, thumbnail=None)])
                bare.append((item.id, why))
                continue
            except index.InvalidItemError as exc:
                why = str(exc)
        left_out.append((item.id, why))
    return written
