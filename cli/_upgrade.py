"""`simsearch index upgrade`: rewrite the filter fields of a Milvus gallery's rows written by an older simsearch.

A gallery in Milvus filters on `match`, fields each row carries, derived from its label and metadata when the
row is written (index/_milvus.py). Rows written before those fields described paths into objects and lists'
elements lack them, and the store refuses the filters they would answer wrongly, naming this command. It
rewrites `match` from each such row's own label and metadata, in pages, and changes nothing else, so the
service keeps serving and writing meanwhile; cut off, it is run again and goes on with the rows left.
"""
from __future__ import annotations

import sys

from . import _galleries as g
from ._errors import CliError


def register_index(isub) -> None:
    """`simsearch index upgrade`'s options (the index command's subparsers call this)."""
    u = isub.add_parser("upgrade", help="rewrite the filter fields of a Milvus gallery's rows written by an older "
                                        "simsearch (what a refused path filter names)",
                        description="Rewrite the filter fields (`match`) of every row of a gallery in Milvus that "
                                    "an older simsearch wrote, from the row's own label and metadata, 1000 rows a "
                                    "write; ids, vectors, labels, metadata, thumbnails and the listing order are "
                                    "kept. Safe while the service runs; run again when cut off. Until it has run, "
                                    "such a gallery refuses filters on paths (cam.make) and on values under keys "
                                    "where those rows hold objects or lists. Exit status 1 when a row's fields "
                                    "exceed what Milvus holds (each is named; it is left as it was).")
    g.milvus_option(u)
    g.gallery_option(u)
    u.add_argument("--all", action="store_true", help="every gallery in --milvus-uri")
    u.set_defaults(func=upgrade)


def upgrade(args) -> int:
    """Rewrite the old rows of --gallery (or with --all every gallery) in --milvus-uri; print what it rewrote."""
    if not args.milvus_uri:
        raise CliError("index upgrade rewrites galleries in Milvus: give --milvus-uri URI (or set "
                       "SIMSEARCH_MILVUS_URI); a gallery in a data folder reads its metadata and needs no upgrade")
    names = g.milvus_gallery_names(args.milvus_uri) if args.all else [args.gallery]
    if args.all and not names:
        raise CliError(f"no galleries in {args.milvus_uri} to upgrade")
    status = 0
    for name in names:
        if not args.all and name not in g.milvus_gallery_names(args.milvus_uri):
            raise CliError(f"no gallery {name!r} in {args.milvus_uri} (`simsearch index galleries --milvus-uri "
                           f"{args.milvus_uri}` lists them)")
        with g.open_milvus(args.milvus_uri, False, None, name) as store:
            old = store.old_layout_rows()
            if old == 0:
                print(f"gallery {name!r}: every row has the current filter fields; nothing to rewrite")
                continue
            rewritten, too_large = store.upgrade_layout(
                progress=lambda done, total: print(f"  {done}/{total} rows", file=sys.stderr))
            print(f"gallery {name!r}: rewrote the filter fields of {rewritten} of {old} rows written by an older "
                  f"simsearch; {store.old_layout_rows()} such rows left")
            for id_ in too_large:
                print(f"  item {id_!r}: its filter fields exceed the 65,535 bytes Milvus holds; left as it was "
                      "(split its lists, or delete it)", file=sys.stderr)
            status = status or (1 if too_large else 0)
    return status
