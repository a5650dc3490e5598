"""`simsearch index build|stats` (embed a gallery into the store) and `simsearch search IMAGE`.

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

from ._errors import CliError

# The longest side of the thumbnails `index build` stores: the service's SIMSEARCH_THUMBNAIL_SIZE default
# (app/_settings.py), so that a gallery's items get one size whether built here or sent to POST /index.
THUMB_PX = 128


def _default_data() -> str:
    return os.environ.get("SIMSEARCH_DATA_DIR", "data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or inspect the gallery index")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    b = isub.add_parser("build", help="embed a folder or tar of images into the index (resumable)")
    b.add_argument("source", help="a folder of images (searched recursively) or a .tar/.tar.gz of one; "
                                  "an image's class folder is its label, the class `simsearch train` makes "
                                  "it (ImageFolder: shoes/2023/x.jpg is shoes, train/cat/x.jpg is cat)")
    _common(b, model=True, milvus=True)
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
    b.add_argument("--thumbnail-size", type=int, default=THUMB_PX, metavar="PX",
                   help=f"longest side of each stored JPEG thumbnail (default {THUMB_PX}, as the service's "
                        "SIMSEARCH_THUMBNAIL_SIZE; a smaller image is kept at its own size, never enlarged; "
                        "0 stores none, as --no-thumbnails)")
    b.add_argument("--metadata", metavar="FILE", help=_METADATA_HELP)
    b.add_argument("--exif", action="store_true", help=_EXIF_HELP)
    b.add_argument("--gps", action="store_true", help=_GPS_HELP)
    b.set_defaults(func=_build)

    s = isub.add_parser("stats", help="count, model, index kind and labels of the index")
    _common(s, model=False, milvus=True)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_stats)

    f = isub.add_parser("facets", help="how the items spread over a label or a metadata key's values, most first",
                        description="Count the items of each value of FIELD (`label`, or `metadata.KEY` for a "
                                    "top-level key of the items' metadata), the most common first, under --label "
                                    "and --where: which albums, sources or years a gallery holds and how many of "
                                    "each (the service's GET /facets). Reads the index without locking it, so it "
                                    "works while the service serves it.")
    f.add_argument("field", metavar="FIELD", help="label, or metadata.KEY (e.g. metadata.album)")
    _common(f, model=False, milvus=True)
    f.add_argument("--label", help="only items with this label")
    f.add_argument("--where", metavar="JSON", help='only items whose metadata matches, e.g. \'{"year": 2024}\'')
    f.add_argument("--limit", type=int, default=100, help="most values printed (100); the rest are counted")
    f.add_argument("--json", action="store_true", help="print JSON (as GET /facets answers)")
    f.set_defaults(func=_facets)

    g = isub.add_parser("galleries", help="the galleries of a data folder (the default one and named ones), with "
                                          "their sizes and models")
    g.add_argument("--data", default=_default_data(), action=_DataFolder,
                   help="data directory (default $SIMSEARCH_DATA_DIR or ./data)")
    _milvus_option(g)
    g.add_argument("--json", action="store_true", help="print JSON")
    g.set_defaults(func=_galleries)

    c = isub.add_parser("check", help="look the index over for damage (safe while the service serves it)",
                        description="Read the whole index and report damage: SQLite's quick_check, every item's "
                                    "vector (length, finite, unit norm), label and metadata, the FAISS snapshot's "
                                    "checksum, and with --thumbnails every thumbnail decoded. Reads only, so it is "
                                    "safe while `simsearch serve` runs on DATA. Exit status 1 when anything is "
                                    "damaged.")
    _common(c, model=False)
    c.add_argument("--thumbnails", action="store_true", help="also decode every stored thumbnail (slower)")
    c.set_defaults(func=_check)

    x = isub.add_parser("duplicates", help="pairs of gallery items that look alike, the most alike first",
                        description="Search the gallery with every one of its own items and print the pairs at "
                                    "least --min-score alike (cosine of their vectors), the most alike first, "
                                    "marking pairs whose labels differ: copies, near-copies (a re-encoded or "
                                    "resized file) and the same picture stored under two labels. Reads only, so it "
                                    "is safe while `simsearch serve` runs on DATA; items written meanwhile may be "
                                    "missed.")
    _common(x, model=False, milvus=True)
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
    k.add_argument("--data", default=_default_data(), action=_DataFolder,
                   help="data directory (default $SIMSEARCH_DATA_DIR or ./data)")
    k.add_argument("--gallery", metavar="NAME",
                   help="back up this gallery alone ('default' for the default one), into its place in DEST "
                        "(DEST/galleries/NAME/index; the default one: DEST/index)")
    k.set_defaults(func=_backup)

    u = isub.add_parser("upload", help="send a folder or tar of images to a running service (resumable)",
                        description="Add the images of SOURCE to a running `simsearch serve` over its HTTP API (POST "
                                    "/index), as `index build` would add them to a stopped one: the path relative "
                                    "to SOURCE is the id, the class folder the label, {width, height} the metadata. Ids "
                                    "the service already holds are skipped (unless --replace), so an interrupted "
                                    "upload continues where it stopped; a file the service refuses is reported "
                                    "and skipped; 429 and 503 answers are waited out.")
    u.add_argument("source", help="a folder of images (searched recursively) or a .tar/.tar.gz of one")
    u.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    _gallery_option(u)
    u.add_argument("--api-key", help="the service's API key for writes (default $SIMSEARCH_API_KEY)")
    u.add_argument("--batch-size", type=int, default=32,
                   help="images per request (32; at most the service's SIMSEARCH_MAX_FILES_PER_REQUEST, 64 by default)")
    u.add_argument("--parallel", type=int, default=2, help="requests in flight (2)")
    u.add_argument("--timeout", type=float, default=120, help="seconds to wait for one answer (120)")
    u.add_argument("--replace", action="store_true", help="send every image, also those the service holds")
    u.add_argument("--no-labels", action="store_true", help="do not take labels from folder names")
    u.add_argument("--metadata", metavar="FILE", help=_METADATA_HELP)
    u.add_argument("--exif", action="store_true", help=_EXIF_HELP)
    u.add_argument("--gps", action="store_true", help=_GPS_HELP)
    u.add_argument("--skip-duplicates", type=float, default=None, metavar="SCORE",
                   help="leave out each image whose cosine similarity with one the service holds (or this upload "
                        "sent before it) is at least SCORE, and name it: 0.98 catches copies, re-encoded or resized "
                        "(POST /index?skip_duplicates)")
    u.set_defaults(func=_upload)

    r = isub.add_parser("reembed", help="embed the index again with another model, from its thumbnails, into a new folder",
                        description="Embed every item of the index in DATA again with --model, from the thumbnail "
                                    "stored with it, into a new index in DEST/index (ids, labels, metadata and "
                                    "thumbnails copied, same index kind unless --index). DATA is only read, so "
                                    "`simsearch serve` can keep serving it meanwhile; run again to catch up with "
                                    "what it wrote since (after stopping it, for an exact copy). Items stored "
                                    "without a thumbnail are reported and left out (exit status 1).")
    r.add_argument("dest", help="a new folder, or one an earlier run of this command filled; the index goes to DEST/index")
    _common(r, model=False)
    r.add_argument("--model", help="the new model's artifact (.safetensors); default: the bundled cifar10 Hybrid-1")
    r.add_argument("--index", help="index kind of the new index (default: the kind DATA's index uses)")
    r.add_argument("--batch-size", type=int, default=256, help="items embedded and committed together (256)")
    r.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads decoding thumbnails (default: CPU count, at most 8)")
    r.add_argument("--threads", type=int, default=None, help="torch and FAISS threads for the model (default 1)")
    r.set_defaults(func=_reembed)

    y = isub.add_parser("copy", help="copy a gallery with its vectors: folder to Milvus, Milvus to folder, or alike",
                        description="Copy the gallery of --data (or --milvus-uri) into --to-data or --to-milvus-uri: "
                                    "every item's id, vector, label, metadata and thumbnail, in listing order, "
                                    "nothing embedded again (the destination is for the same model). The source is "
                                    "only read, so a service can keep serving it; stop its writes first for an exact "
                                    "copy. Items the destination holds already are replaced by the source's, others "
                                    "it holds are kept. A copy cut off is run again (it writes every item again). "
                                    "Exit status 1 when an item could not be copied exactly (each is named: Milvus "
                                    "holds smaller thumbnails, labels and metadata than a folder).")
    _common(y, model=False, milvus=True)
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
    y.set_defaults(func=_copy)

    e = isub.add_parser("edit", help="set metadata of items already indexed, from a file (no embedding)",
                        description="Apply each row of --metadata to the item of its id, as a JSON merge patch on "
                                    "its metadata: each key given is set (in JSON Lines a key given as null is "
                                    "removed), the others kept; labels, vectors and thumbnails stay. For items "
                                    "indexed before their metadata was at hand (`index build --metadata` gives new "
                                    "images theirs). In DATA while no service has it open, in Milvus, or with "
                                    "--url through a running service (PATCH /index/{id}). Run again after an "
                                    "interruption: applying a row twice changes nothing more.")
    e.add_argument("--metadata", metavar="FILE", required=True,
                   help="the metadata to set, from a file: JSON Lines (.jsonl, one object a line: {\"id\": "
                        "\"cat/001.jpg\", \"album\": \"trip\", \"draft\": null}: album set, draft removed) or CSV "
                        "(.csv, a header with an id column; every other non-empty cell sets its column's key to "
                        "that string)")
    _common(e, model=False, milvus=True)
    e.add_argument("--url", help="edit through a running service instead, e.g. http://127.0.0.1:8000")
    e.add_argument("--api-key", help="with --url: the service's API key for writes (default $SIMSEARCH_API_KEY)")
    e.add_argument("--timeout", type=float, default=120, help="with --url: seconds to wait for one answer (120)")
    e.set_defaults(func=_edit)

    d = isub.add_parser("delete", help="remove items by id, label or metadata filter (asks for --yes)",
                        description="Remove items from the index: the ids given, or every item with --label and/or "
                                    "matching --where. Without --yes, only says how many would go. While "
                                    "`simsearch serve` has the index open, delete over HTTP instead "
                                    "(DELETE /index/{id}, DELETE /index?where=...).")
    d.add_argument("ids", nargs="*", metavar="ID", help="ids of items to remove")
    _common(d, model=False, milvus=True)
    d.add_argument("--label", help="every item with this label")
    d.add_argument("--where", metavar="JSON", help='every item whose metadata matches, e.g. \'{"year": {"$lt": 2020}}\'')
    d.add_argument("--yes", action="store_true", help="delete (otherwise only count what would go)")
    d.set_defaults(func=_delete)

    q = sub.add_parser("search", help="print the nearest gallery images of an image (or of many)",
                       description="Search the index with one query image, or with many: several files, folders "
                                   "(searched recursively) or tars of images, embedded in batches. With several "
                                   "queries, --json prints one JSON object a line ({\"query\", \"label\", "
                                   "\"results\"}), and where the queries sit in class folders (ImageFolder) the "
                                   "share whose nearest neighbour has the query's label is reported (on stderr "
                                   "with --json, so that stdout holds JSON only).")
    _query_options(q, k=10, k_help="number of neighbours (10)", where_help='only neighbours whose metadata matches, '
                   'e.g. \'{"source": "phone", "year": {"$gte": 2020}}\' (operators: docs/index.md "Filters")',
                   distance_help="only neighbours within this distance (0 or more: distances between unit "
                                 "vectors lie in 0..2, so 2 or more keeps every item)",
                   url_help="search a running service instead (its POST /batch/search, many queries a request), "
                            "e.g. http://127.0.0.1:8000; --data and --model are then its own",
                   images_help=" (none with --like: the marked items alone are the query)")
    q.add_argument("--label", help="only neighbours with this label")
    q.add_argument("--rerank", type=int, metavar="N", help="re-order the N nearest candidates with the model's "
                                                            "PDDM head and print the best k (N >= k)")
    q.add_argument("--like", action="append", default=[], metavar="ID",
                   help="more like this gallery item (repeat for more): every query moves towards the liked items "
                        "and away from the unliked ones, and no marked item is printed (the service's like=)")
    q.add_argument("--unlike", action="append", default=[], metavar="ID", help="less like this gallery item")
    q.add_argument("--group-by", metavar="FIELD",
                   help="print the k nearest groups instead of the k nearest items: `label`, or `metadata.KEY` "
                        "(e.g. metadata.product); groups rank by their nearest item, items without a value are "
                        "skipped (the service's group_by)")
    q.add_argument("--group-size", type=int, default=1, metavar="N", help="with --group-by: items printed a group (1)")
    q.add_argument("--exclude", action="append", default=[], metavar="ID",
                   help="never print this gallery item (repeat for more; the service's exclude=)")
    q.add_argument("--offset", type=int, default=0, metavar="N",
                   help="skip the N nearest first (with --group-by, N groups): the next page, -k 10 --offset 10 "
                        "prints the 11th to 20th (the service's offset=)")
    q.set_defaults(func=_search, classify=False)

    v = sub.add_parser("classify", help="print the label the nearest gallery images agree on, for an image (or many)",
                       description="Classification by retrieval, as the service's POST /classify: the k nearest "
                                   "gallery items vote with their labels (unlabelled ones abstain; a tie goes to "
                                   "the label of the nearest of the tied), and no item within --max-distance "
                                   "means unknown. Queries as for `simsearch search`; with several, --json prints "
                                   "one JSON object a line, and where the queries sit in class folders the share "
                                   "classified as their folder's label is reported (on stderr with --json, so that "
                                   "stdout holds JSON only).")
    _query_options(v, k=1, k_help="how many nearest items vote (1: the nearest item's label)",
                   where_help="only gallery items whose metadata matches vote (as for search)",
                   distance_help="only items within this distance vote (0 or more; 2 or more keeps every item); "
                                 "none: unknown (`simsearch evaluate` gives it for a wanted precision)",
                   url_help="classify with a running service instead (its POST /batch/search, many queries a "
                            "request, voted here as its /classify votes)")
    v.set_defaults(func=_search, classify=True, label=None, rerank=None, like=[], unlike=[], group_by=None,
                   group_size=1, exclude=[], offset=0)


def _query_options(p: argparse.ArgumentParser, k: int, k_help: str, where_help: str, distance_help: str,
                   url_help: str, images_help: str = "") -> None:
    """The options `search` and `classify` share: the queries, where the gallery is, and how to ask."""
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files, folders or tars of them" + images_help)
    _common(p, model=True, milvus=True)
    p.add_argument("-k", type=int, default=k, help=k_help)
    p.add_argument("--where", metavar="JSON", help=where_help)
    p.add_argument("--max-distance", type=float, help=distance_help)
    p.add_argument("--crop", metavar="L,T,R,B", help="use only this region of each query image: left,top,right,"
                                                      "bottom as fractions (0 to 1) of its width and height, e.g. "
                                                      "0.25,0.1,0.75,0.9 (the service's crop=)")
    p.add_argument("--together", action="store_true",
                   help="the query images are several photos of one kind of thing: one query, the mean of their "
                        "embeddings (as the service's POST /search with several file parts)")
    p.add_argument("--combine", choices=("mean", "best"), default="mean",
                   help="with --together: `mean`, images near all of them (the mean of their embeddings; for a "
                        "kind the model knows), or `best`, images near any of them (each searched, every item at "
                        "its best score; for kinds of image the model never saw) (the service's combine=)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--url", help=url_help)
    p.add_argument("--api-key", help="with --url, where the service needs a key for searches (default "
                                     "$SIMSEARCH_API_KEY)")
    p.add_argument("--timeout", type=float, default=120.0, help="with --url: seconds to wait for an answer (120)")
    p.add_argument("--after", metavar="POSITION", help="with --url: answers from a gallery at least as new as this "
                                                       "position (what a write or `index upload` reported), from a "
                                                       "read-only replica too")


def _common(p: argparse.ArgumentParser, model: bool, milvus: bool = False) -> None:
    p.add_argument("--data", default=_default_data(), action=_DataFolder,
                   help="data directory; the index lives in DATA/index (default $SIMSEARCH_DATA_DIR or ./data)")
    _gallery_option(p)
    if model:
        p.add_argument("--model", help="model artifact (.safetensors); default: the bundled model that made the "
                                       "gallery's vectors, the bundled cifar10 Hybrid-1 for a new gallery")
    if milvus:
        _milvus_option(p)


class _MilvusUriFromEnv(str):
    """$SIMSEARCH_MILVUS_URI as the default of --milvus-uri: set aside by a --data given on the command line."""


class _DataFolder(argparse.Action):
    """--data given on the command line: the folder is meant, even where $SIMSEARCH_MILVUS_URI is set (as in
    the service's container); an explicit --milvus-uri still wins."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        if isinstance(getattr(namespace, "milvus_uri", None), _MilvusUriFromEnv):
            namespace.milvus_uri = None


def _milvus_option(p: argparse.ArgumentParser) -> None:
    env = os.environ.get("SIMSEARCH_MILVUS_URI")
    p.add_argument("--milvus-uri", default=_MilvusUriFromEnv(env) if env else None,
                   help="the galleries in Milvus instead of DATA, as the service's SIMSEARCH_MILVUS_URI (default "
                        "$SIMSEARCH_MILVUS_URI unless --data is given; its credentials from $SIMSEARCH_MILVUS_TOKEN, "
                        "its database from $SIMSEARCH_MILVUS_DB)")


def _gallery_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", default="default", metavar="NAME",
                   help="a named gallery (DATA/galleries/NAME/index; through a service, its ?gallery=NAME) instead "
                        "of the default one")


def _gallery_folder(data: str, gallery: str) -> Path:
    """The store folder of --gallery in --data; CliError for a name no gallery can have."""
    import index

    try:
        return index.gallery_path(Path(data), gallery)
    except index.InvalidItemError as exc:
        raise CliError(f"--gallery: {exc}") from None


def _embedder(path: str | None):
    import model

    artifact = Path(path) if path else model.default_artifact_path("cifar10")
    if not artifact.exists():
        raise CliError(f"no model artifact at {artifact}" + ("" if path else "; pass --model"))
    try:
        return model.Embedder.from_file(artifact)
    except model.ArtifactError as exc:
        raise CliError(f"--model {artifact}: {exc}") from None


def _embedder_for(path: str | None, data: str, gallery: str = "default", milvus_uri: str | None = None):
    """--model's artifact. Without it, the bundled artifact that made the gallery's vectors, so that a gallery
    indexed with hybrid1-mnist, say, is searched and added to with it; the default one for a new gallery."""
    if path:
        return _embedder(path)
    import index
    import model

    # no gallery yet: the default model (what is wrong with one that cannot be read is said when it opens)
    if milvus_uri:
        try:
            store = _open_milvus(milvus_uri, True, None, gallery)
        except CliError:
            return _embedder(None)
        with store:
            recorded, where = store.model_id, f"gallery {gallery!r} in Milvus"
    else:
        folder = _gallery_folder(data, gallery)
        try:
            with index.StoreReader(folder) as reader:
                recorded, where = reader.model_id, f"the index at {folder}"
        except index.StoreError:
            return _embedder(None)
    found = model.bundled_artifact(recorded)
    if found is None:
        raise CliError(f"{where} holds vectors of model {recorded!r}, which is none of the bundled models: pass "
                       "that model's artifact with --model (or build the gallery again, elsewhere, with the model "
                       "you have)")
    return _embedder(str(found))


def _open_store(data: str, read_only: bool, embedder=None, kind: str | None = None, locked_hint: str = "",
                gallery: str = "default", milvus_uri: str | None = None, vectors: tuple[int, str] | None = None):
    """The store of `gallery` in DATA (DATA/index for the default one), or in Milvus at milvus_uri, for
    the vectors of `embedder` (or `vectors`: their dim and model id; neither: what the store records);
    CliError for every store error, `locked_hint` appended when another process (a running service)
    holds it for writing."""
    import index

    if embedder is not None:
        vectors = (embedder.dim, embedder.model_id)
    if milvus_uri:
        return _open_milvus(milvus_uri, read_only, kind, gallery, vectors)
    path = _gallery_folder(data, gallery)
    if read_only and not (path / "store.sqlite3").exists():
        named = "" if gallery == "default" else f" --gallery {gallery}"
        raise CliError(f"no index at {path} (build one with `simsearch index build SOURCE --data {data}{named}`)")
    cfg = index.StoreConfig(path=path, dim=vectors[0] if vectors else None,
                            model_id=vectors[1] if vectors else None, index=kind, read_only=read_only)
    try:
        return index.Store.open(cfg)
    except index.StoreLockedError as exc:
        raise CliError(f"{exc}{locked_hint}") from None
    except index.StoreError as exc:  # mismatch, lock, corrupt database, bad --index: all user-facing
        raise CliError(str(exc)) from None


def _milvus_credentials() -> tuple[str | None, str | None]:
    """(token, database) for Milvus, from $SIMSEARCH_MILVUS_TOKEN and $SIMSEARCH_MILVUS_DB, as the service reads them."""
    return os.environ.get("SIMSEARCH_MILVUS_TOKEN") or None, os.environ.get("SIMSEARCH_MILVUS_DB") or None


def _milvus_gallery_names(uri: str) -> list[str]:
    import index

    return index.milvus_gallery_names(uri, *_milvus_credentials())


def _open_milvus(uri: str, read_only: bool, kind: str | None, gallery: str, vectors: tuple[int, str] | None = None):
    import importlib.util

    import index

    if importlib.util.find_spec("pymilvus") is None:
        raise CliError("--milvus-uri needs pymilvus installed (pip install 'simsearch[milvus]')")
    token, db_name = _milvus_credentials()
    cfg = index.MilvusConfig(uri, token=token, db_name=db_name, gallery=gallery,
                             dim=vectors[0] if vectors else None, model_id=vectors[1] if vectors else None,
                             index=kind, read_only=read_only)
    try:
        return index.MilvusStore.open(cfg)
    except index.StoreError as exc:   # mismatch, unreachable, bad --index or --gallery
        raise CliError(str(exc)) from None


# ---- build -------------------------------------------------------------------------------------

def _scan(source: Path, labels: bool):
    """(ids, label of each id, reader, links left out) for a folder or a tar. The reader maps an id to its bytes
    (None for a folder). A tar is read as the folder it was made of: hidden members (`._IMG_1.jpg`, `.DS_Store`,
    anything in a `.folder/`) left out and a single top folder descended (a tar of `photos/` has the ids a build
    of `photos/` has; one made inside it, `./cat/1.jpg`, is descended no further); its symbolic links are left out
    and counted."""
    import tarfile

    from model import IMAGE_EXTENSIONS, files_under

    if source.is_dir():
        try:
            ids = [n for n in files_under(source) if n.lower().endswith(IMAGE_EXTENSIONS)]
        except OSError as exc:  # a folder inside that cannot be listed
            raise CliError(f"{source}: cannot list {exc.filename}: {exc.strerror}") from None
        return ids, _labels_of(ids, labels), None, 0
    if source.is_file() and tarfile.is_tarfile(source):
        tf = tarfile.open(source)
        inside = False   # made inside the folder (`tar cf x.tar -C photos .`): the names are relative to it
        named = []
        for m in tf.getmembers():
            name = m.name
            inside |= name == "." or name.startswith("./")
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/")
            if name and name != "." and not any(part.startswith(".") for part in name.split("/")):
                named.append((name, m))
        tops = {name.split("/", 1)[0] for name, _ in named}
        top = tops.pop() if len(tops) == 1 and not inside else None
        if top is not None and any(name == top and not m.isdir() for name, m in named):
            top = None   # a tar of one file
        members, links = {}, 0
        for name, m in named:
            if top is not None:
                if name == top:
                    continue
                name = name[len(top) + 1:]
            if m.issym():
                links += 1
            elif (m.isfile() or m.islnk()) and name.lower().endswith(IMAGE_EXTENSIONS):
                members[name] = m   # a hard link is read as the file it is another name of
        ids = sorted(members)
        return ids, _labels_of(ids, labels), (tf, members), links
    raise CliError(f"source {source} is neither a folder nor a tar archive")


def _links_note(links: int) -> str:
    """What the summary line says of a tar's symbolic links, which are left out ("" when it has none)."""
    return f" ({links} symbolic link{'s' if links != 1 else ''} in it left out)" if links else ""


_SPLITS = ("train", "test", "val", "valid", "validation")   # the split folders `simsearch train` reads (training/_data)


def _labels_of(ids: list[str], labels: bool) -> dict[str, str | None]:
    """Each id's label, as `simsearch train` would class the image (ImageFolder): its top folder under SOURCE
    (photos/shoes/2023/IMG.jpg: "shoes"), or where SOURCE is split into train/ and test/ (or a validation
    folder), or holds just one of those, its top folder under the split (train/cat/x.jpg: "cat"). An image
    directly in SOURCE, or directly in a split folder, has none; so does every image with `labels` off."""
    if not labels:
        return dict.fromkeys(ids)
    tops = {i.split("/", 1)[0] for i in ids if "/" in i}
    split = ("train" in tops and bool(tops & set(_SPLITS[1:]))) or (len(tops) == 1 and tops <= set(_SPLITS))
    out: dict[str, str | None] = {}
    for i in ids:
        parts = i.split("/")
        if split and parts[0] in _SPLITS:
            parts = parts[1:]
        out[i] = parts[0] if len(parts) >= 2 else None
    return out


def _model_input(data: bytes, embedder, crop=None):
    """Image bytes -> the model's input array, made as the service makes it from an upload (the decoder's
    draft mode for photos, EXIF orientation, the region `crop`), so that one image gets one vector whether
    it was indexed or searched here or through the service. Runs in worker threads."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return embedder.preprocess(im, crop)


def _decode(data: bytes, embedder, thumb_px: int, exif: bool = False, gps: bool = False):
    """bytes -> (model array, thumbnail JPEG bytes or None, metadata: {width, height} as displayed, and with
    `exif` when and with what it was taken, with `gps` where), for `index build`: the thumbnail as the
    service makes one (model.make_thumbnail: upright, alpha on white), from a second decoding at its own
    draft scale. Runs in worker threads."""
    import io

    from PIL import Image

    import model

    arr = _model_input(data, embedder)
    with Image.open(io.BytesIO(data)) as im:
        width, height = model.displayed_size(im)
        meta = {"width": width, "height": height}
        if exif:
            from ._metadata_file import exif_metadata
            meta.update(exif_metadata(im))
        if gps:
            from ._metadata_file import gps_metadata
            meta.update(gps_metadata(im))
        thumb = None
        if thumb_px:
            if im.format in model.DRAFT_FORMATS:
                im.draft(None, (thumb_px, thumb_px))
            thumb = model.make_thumbnail(im, thumb_px)
    return arr, thumb, meta


def _model_threads(threads: int | None) -> None:
    """--threads for a command that decodes in worker threads and embeds (build, reembed). OpenMP reads
    its thread count when torch or FAISS is first imported, so this runs first. One intra-op thread by
    default: the decoding workers need the other cores, and spinning OpenMP threads beside them made
    the build 5.5x slower on 2 cores (docs/results/benchmarks.md, ingestion)."""
    if threads is not None:
        if threads < 1:
            raise CliError(f"--threads must be at least 1, got {threads}")
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


_EXIF_HELP = ("also store when each photo was taken and with what camera, from its EXIF: {\"taken\": "
              "\"2024-06-01T14:03:22+02:00\", \"camera\": \"Apple iPhone 13\"} (each only when the photo "
              "records it), so that searches can filter on them (where={\"taken\": {\"$gte\": \"2024\"}})")
_GPS_HELP = ("also store where each photo was taken, from its EXIF GPS: {\"lat\": 48.858370, \"lon\": 2.294481, "
             "\"altitude\": 35.0} (decimal degrees, south and west negative; only for a photo that records a fix), "
             "so that searches can filter on a box (where={\"lat\": {\"$gte\": 48.8, \"$lte\": 48.9}, \"lon\": "
             "{\"$gte\": 2.2, \"$lte\": 2.4}}). Off unless asked: a location is personal data")
_METADATA_HELP = ("each image's metadata from a file: JSON Lines (.jsonl, one object a line: {\"id\": "
                  "\"cat/001.jpg\", \"album\": \"trip\", \"year\": 2024}, the id being the path relative to "
                  "SOURCE) or CSV (.csv, a header with an id column; every other cell a string value); added to "
                  "{width, height}, and taking their place when it names them")


def _metadata_for(path: str | None, ids: list[str]) -> dict[str, dict]:
    """--metadata read (id -> metadata object), saying how many of its rows name no image of the source."""
    if path is None:
        return {}
    from ._metadata_file import read_metadata_file

    extra = read_metadata_file(path)
    unknown = sorted(set(extra) - set(ids))
    if unknown:
        print(f"--metadata {path}: {len(unknown)} of its {len(extra)} rows name no image here "
              f"(e.g. {', '.join(repr(i) for i in unknown[:3])}); the ids are paths relative to the source",
              file=sys.stderr)
    return extra


def _build(args) -> int:
    _model_threads(args.threads)

    import logging
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    import index
    from model._formats import unreadable_reason

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.thumbnail_size <= 1024:   # the service's bounds for SIMSEARCH_THUMBNAIL_SIZE
        raise CliError(f"--thumbnail-size must be 0 to 1024, got {args.thumbnail_size}")
    source = Path(args.source)
    if not source.exists():
        raise CliError(f"source {source} does not exist")
    embedder = _embedder_for(args.model, args.data, args.gallery, args.milvus_uri)
    ids, labels, tar, links = _scan(source, not args.no_labels)
    if not ids:
        from model import IMAGE_EXTENSIONS

        raise CliError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
    extra = _metadata_for(args.metadata, ids)
    store = _open_store(args.data, False, embedder, args.index, gallery=args.gallery, milvus_uri=args.milvus_uri,
                        locked_hint=". While `simsearch serve` runs on it, add images through the service: "
                                    f"simsearch index upload {shlex.quote(str(args.source))} --url http://HOST:PORT "
                                    "--api-key KEY")
    try:
        done = store.has_ids(ids)  # resume: what an earlier (interrupted) run committed
        todo = [i for i in ids if i not in done]
        print(f"{len(ids)} images in {source}{_links_note(links)}: {len(done)} already indexed, {len(todo)} to "
              f"embed with {embedder.model_id} into {store.info()['path']}")
        kept = len(set(extra) & done)
        if kept:
            print(f"--metadata: {kept} of the images it names are indexed already and keep the metadata they have "
                  f"(`simsearch index edit --metadata {args.metadata}` sets it on them)", file=sys.stderr)
        failed = 0

        def read(id_: str) -> bytes:
            if tar is None:
                return (source / id_).read_bytes()
            tf, members = tar
            return tf.extractfile(members[id_]).read()

        def work(item):
            id_, data = item
            try:
                return id_, _decode(data, embedder, 0 if args.no_thumbnails else args.thumbnail_size, args.exif,
                                    args.gps), None
            except Exception as exc:  # a broken file is reported and skipped, not fatal
                return id_, None, unreadable_reason(exc, data)

        with ThreadPoolExecutor(args.workers) as pool, \
                tqdm(total=len(todo), unit="img", desc="indexing") as bar:
            for start in range(0, len(todo), args.batch_size):
                chunk = todo[start:start + args.batch_size]
                # A tar is read sequentially in this thread; decoding fans out to the pool.
                blobs = [(i, read(i)) for i in chunk] if tar is not None else None
                results = list(pool.map(work, blobs)) if blobs is not None else \
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
                                  for (i, r), v in zip(good, vecs)])
                bar.update(len(chunk))
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
        if tar is not None:
            tar[0].close()
    # 1: not one image of SOURCE could be read. A re-run whose only images left to do are the unreadable
    # ones an earlier run skipped (and reports again) has nothing new to do: 0.
    return 1 if failed and failed == len(todo) and not done else 0


# ---- stats and search ---------------------------------------------------------------------------

def _stats(args) -> int:
    import json

    store = _open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
    try:
        info = store.info()
        counts = store.labels()
        # JSON keys are strings: the unlabelled items are counted apart, not as a label "None"
        info["labels"] = {k: v for k, v in counts.items() if k is not None}
        info["unlabelled"] = counts.get(None, 0)
    finally:
        store.close()
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
    where = _where_arg(args.where)
    store = _open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
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
    for what, n in (("others", others), ("no value", found.missing), ("a list or an object", found.not_scalar)):
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
            names = _milvus_gallery_names(args.milvus_uri)
        except index.StoreError as exc:
            raise CliError(str(exc)) from None
        for name in names:
            try:
                with _open_milvus(args.milvus_uri, True, None, name) as store:
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

    path = _gallery_folder(args.data, args.gallery)
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
    print(f"{found.damaged} problems{listed} in {checked}"
          + f". Damaged items can be deleted (`simsearch index delete ID ... --data {args.data} --yes`, or "
          "over HTTP) and added again from their images; a damaged snapshot is rebuilt by the next start; "
          "for SQLite damage restore a backup (docs/index.md)")
    return 1


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

    store = _open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)
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

    dest = Path(args.dest)
    names = None
    if args.gallery is not None:
        _gallery_folder(args.data, args.gallery)  # a name no gallery can have: one line
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


def _upload(args) -> int:
    from ._upload import upload

    return upload(args)


def _edit(args) -> int:
    from ._edit import edit

    if args.url and args.milvus_uri:
        raise CliError("give --url (a running service) or --milvus-uri (Milvus itself), not both")
    return edit(args, lambda read_only: _open_store(
        args.data, read_only, gallery=args.gallery, milvus_uri=args.milvus_uri,
        locked_hint=". While `simsearch serve` runs, edit through it: add --url"))


def _copy(args) -> int:
    from ._copy import copy

    return copy(args)


def _reembed(args) -> int:
    from ._reembed import reembed

    return reembed(args)


def _crop_arg(text: str | None):
    """--crop as a model.Crop, or None; CliError naming what is wrong."""
    if text is None:
        return None
    import model

    try:
        return model.parse_crop(text)
    except ValueError as exc:
        raise CliError(f"--crop: {exc}") from None


def _where_arg(text: str | None) -> dict | None:
    """--where parsed and checked, or None; CliError naming what is wrong."""
    import json

    import index

    if not text:
        return None
    try:
        where = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--where {text!r} is not valid JSON: {exc}") from None
    try:
        index.check_where(where)
    except index.InvalidItemError as exc:
        raise CliError(f"--{exc}") from None
    return where


def _display_width(text: str) -> int:
    """The terminal columns `text` takes: two for a wide or full-width character (CJK), none for a combining one."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _delete(args) -> int:
    import index

    where = _where_arg(args.where)
    if not args.ids and args.label is None and where is None:
        raise CliError("give the ids to delete, or --label and/or --where (it never empties the index)")
    if args.ids and (args.label is not None or where is not None):
        raise CliError("give either ids or --label/--where, not both")
    store = _open_store(args.data, True, gallery=args.gallery, milvus_uri=args.milvus_uri)  # read-only: counting works while the service runs
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
    store = _open_store(args.data, False, gallery=args.gallery, milvus_uri=args.milvus_uri, locked_hint=". While `simsearch serve` runs, delete over HTTP: "
                                                    "DELETE /index/{id} or DELETE /index?label=...&where=...")
    try:
        gone = store.delete(args.ids) if args.ids else store.delete_where(args.label, where)
    except index.InvalidItemError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    print(f"deleted {len(gone)} item{'' if len(gone) == 1 else 's'}")
    return 0


def _search(args) -> int:
    import math

    import numpy as np

    import index
    from model._formats import unreadable_reason

    if args.k < 1:
        raise CliError(f"-k must be at least 1, got {args.k}")
    if args.max_distance is not None and not 0 <= args.max_distance < math.inf:   # NaN too, as the service's
        raise CliError(f"--max-distance must be a number of 0 or more (distances between unit vectors lie in 0..2, "
                       f"so 2 or more keeps every item), got {args.max_distance}")
    where = _where_arg(args.where)  # before the model loads
    crop = _crop_arg(args.crop)
    like, unlike = list(dict.fromkeys(args.like)), list(dict.fromkeys(args.unlike))
    if set(like) & set(unlike):
        raise CliError(f"--like and --unlike both name {sorted(set(like) & set(unlike))[:5]}; mark each item one way")
    if (like or unlike) and args.rerank is not None:
        raise CliError("--rerank re-orders by the PDDM score of one image's embedding; a query refined by "
                       "--like/--unlike is a mix of several")
    _check_groups(args)
    _check_offset(args)
    if not args.images and (args.classify or not like):
        raise CliError("give query images" + ("" if args.classify else ", or --like ID: the marked items alone are "
                                                                      "then the query"))
    if not args.images and (args.together or crop):
        raise CliError(f"--{'together' if args.together else 'crop'} needs query images")
    if args.combine != "mean":
        if not args.together:
            raise CliError(f"--combine {args.combine} is how --together makes one query of several images; "
                           "add --together")
        if args.group_by or args.rerank is not None:
            raise CliError(f"--combine best and --{'group-by' if args.group_by else 'rerank'} do not go together: "
                           "best merges each image's nearest items; use --combine mean")
    if args.url and args.model:
        raise CliError("--model with --url: the service searches with its own model")
    if args.after and not args.url:
        raise CliError("--after is for a search through a service (--url); a local search reads the index as it is")
    queries, tars = _queries(args.images)
    first = Path(args.images[0]) if args.images else None
    single = args.together or not args.images or (len(queries) == 1 and first.is_file() and not _is_tar(first))
    show = _Answers(args, single)
    if args.url:
        from . import _remote

        try:
            if args.together or not args.images:   # one query: the images together, or the marks alone
                return _remote.search_together(args, _read_together(queries), len(queries), show)
            labelled, agree, failed = _remote.search(args, queries, single, show)
        finally:
            for tf in tars:
                tf.close()
        return _search_summary(args, labelled, agree, failed, len(queries), show.unknown)
    embedder = _embedder_for(args.model, args.data, args.gallery, args.milvus_uri)
    pddm = _reranker(embedder, args.rerank, args.k, args.offset) if args.rerank is not None else None
    store = _open_store(args.data, True, embedder, gallery=args.gallery, milvus_uri=args.milvus_uri)
    agree = labelled = failed = 0
    try:
        # with --rerank the PDDM re-orders the N nearest, and the offset skips the best of its order
        search = _searcher(store, like, unlike, args.gallery, args.group_by, args.group_size, args.exclude,
                           0 if pddm is not None else args.offset)
        if not args.images:   # the marks alone: 2 mean(liked) - mean(unliked), as the service's no-body search
            show("the marked items", None, search([None], args.k, label=args.label, max_distance=args.max_distance,
                                                  where=where)[0])
            return 0
        if args.together:   # one query: the unit mean of every image's vector
            arrays = []
            for name, _, read in queries:
                data = None
                try:
                    data = read()
                    arrays.append(_model_input(data, embedder, crop))
                except Exception as exc:  # noqa: BLE001  (one unreadable image is reported and left out)
                    why = unreadable_reason(exc, data)
                    if len(queries) == 1:
                        raise CliError(f"cannot read image {name}: {why}") from None
                    failed += 1
                    print(f"skipped {name}: {why}", file=sys.stderr)
            if failed:
                print(f"{failed} of {len(queries)} images could not be read"
                      + ("" if arrays else "; nothing to search with"), file=sys.stderr)
                if not arrays:
                    return 1
            vecs = embedder.embed_arrays(np.stack(arrays))
            if args.combine == "best" and len(vecs) > 1:   # each photo's offset + k nearest, merged
                wide = _searcher(store, like, unlike, args.gallery, None, 1, args.exclude)
                found = wide(vecs, args.offset + args.k, label=args.label, max_distance=args.max_distance, where=where)
                show(f"{len(arrays)} images together", None, index.best_of(found, args.k, args.offset))
                return 0
            try:
                vec = index.mean_query(vecs)
            except ValueError:
                raise CliError(f"--together: the {len(arrays)} images cancel out (their mean is no direction to "
                               "search in); search them one by one") from None
            hits = search(vec[None], args.rerank or args.k, label=args.label, max_distance=args.max_distance,
                          where=where)[0]
            if pddm is not None:
                hits = _rerank(store, pddm, vec, hits, args.k, args.offset)
            show(f"{len(arrays)} images together", None, hits)
            return 0
        for start in range(0, len(queries), 256):
            chunk, arrays = [], []
            for name, label, read in queries[start:start + 256]:
                data = None
                try:
                    data = read()
                    arrays.append(_model_input(data, embedder, crop))
                    chunk.append((name, label))
                except Exception as exc:  # noqa: BLE001  (one unreadable query is reported, not fatal)
                    why = unreadable_reason(exc, data)
                    if single:
                        raise CliError(f"cannot read image {name}: {why}") from None
                    failed += 1
                    print(f"skipped {name}: {why}", file=sys.stderr)
            if not chunk:
                continue
            vecs = embedder.embed_arrays(np.stack(arrays))
            found = search(vecs, args.rerank or args.k, label=args.label, max_distance=args.max_distance, where=where)
            for (name, label), vec, hits in zip(chunk, vecs, found):
                if pddm is not None:
                    hits = _rerank(store, pddm, vec, hits, args.k, args.offset)
                answer = show(name, label, hits)
                if label is not None:
                    labelled += 1
                    agree += answer == label
    except index.StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
        for tf in tars:
            tf.close()
    return _search_summary(args, labelled, agree, failed, len(queries), show.unknown)


def _check_groups(args) -> None:
    """--group-by and --group-size checked as the service checks group_by and group_size; CliError otherwise."""
    import index

    if args.group_by is None:
        if args.group_size != 1:
            raise CliError(f"--group-size {args.group_size} needs --group-by (label or metadata.KEY)")
        return
    try:
        index.check_group_by(args.group_by)
    except ValueError as exc:
        raise CliError(f"--{str(exc).replace('_', '-', 1)}") from None
    if args.rerank is not None:
        raise CliError("--rerank and --group-by do not go together: --rerank re-orders a fixed number of nearest "
                       "items, --group-by reads as many as the groups need")
    if not 1 <= args.group_size <= 100:
        raise CliError(f"--group-size must be 1..100, got {args.group_size}")
    if args.k * args.group_size > 1000:
        raise CliError(f"-k {args.k} groups of --group-size {args.group_size} is {args.k * args.group_size} items; "
                       "at most 1000")


def _read_together(queries) -> list[tuple[str, bytes]]:
    """(name, bytes) of every query image for --together that can be read; one that cannot is skipped,
    said on stderr (CliError naming it when it is the only one)."""
    photos = []
    for name, _, read in queries:
        try:
            photos.append((name, read()))
        except OSError as exc:
            if len(queries) == 1:
                raise CliError(f"cannot read image {name}: {exc}") from None
            print(f"skipped {name}: {exc}", file=sys.stderr)
    return photos


def _check_offset(args) -> None:
    """--offset checked as the service checks offset; CliError otherwise."""
    if args.offset < 0:
        raise CliError(f"--offset must be at least 0, got {args.offset}")
    if (args.offset + args.k) * (args.group_size if args.group_by else 1) > 10_000:
        raise CliError(f"--offset {args.offset} + -k {args.k}" + (f" groups of --group-size {args.group_size}"
                                                                  if args.group_by else "") +
                       ": a search reads at most 10000 items to answer")


def _searcher(store, like: list[str], unlike: list[str], gallery: str, group_by: str | None, group_size: int,
              exclude: list[str], offset: int = 0):
    """search(vecs, k, **filters): the k nearest hits of each query (or with group_by its k nearest groups)
    after the `offset` nearest, each query first refined by the --like/--unlike items, those and the --exclude
    ones left out, as the service's searches do (index.refine_queries, index.search_hits). CliError naming a
    marked id the gallery does not hold."""
    import index

    def search(vecs, k: int, **filters) -> list[list]:
        queries = vecs
        if like or unlike:
            try:
                queries = index.refine_queries(store, list(vecs), like, unlike)
            except KeyError as exc:
                raise CliError(f"--like/--unlike: no item with id(s) {exc.args[0][:5]} in gallery "
                               f"{gallery!r}") from None
            except ValueError as exc:   # a query the marks cancel out
                raise CliError(f"--like/--unlike: {exc}") from None
        return index.search_hits(store, queries, k, like + unlike + exclude, group_by, group_size, offset, **filters)
    return search


class _Answers:
    """show(name, label, hits) prints one query's answer and returns the label it gives: its nearest
    neighbour's, or with `classify` the neighbours' vote (None: unknown, counted in `unknown`)."""

    def __init__(self, args, single: bool):
        self.args, self.single, self.unknown = args, single, 0
        if args.classify:
            from index import vote
            self._vote = vote

    def __call__(self, name: str, label: str | None, hits: list) -> str | None:
        args = self.args
        if not args.classify:
            _print_hits(name, label, hits, args, self.single, args.rerank is not None)
            return hits[0].label if hits else None
        decided = self._vote(hits)
        self.unknown += decided.label is None
        _print_vote(name, label, decided, hits, args, self.single)
        return decided.label


def _search_summary(args, labelled: int, agree: int, failed: int, n: int, unknown: int) -> int:
    # With --json, stdout holds JSON Lines only: the summary lines go to stderr
    out = sys.stderr if args.json else sys.stdout
    if args.classify and n - failed > 1:
        answered = n - failed - unknown
        print(f"{answered} of {n - failed} queries classified ({answered / (n - failed):.3f}), {unknown} unknown",
              file=out)
    if labelled:
        what = "are classified as" if args.classify else "have a nearest neighbour of"
        print(f"{agree} of {labelled} queries with a label ({agree / labelled:.3f}) {what} that label", file=out)
    if failed:
        print(f"{failed} of {n} queries could not be read", file=sys.stderr)
    return 1 if failed == n else 0


def _print_hits(name: str, label: str | None, hits: list, args, single: bool, reranked: bool) -> None:
    import json

    groups = None
    if args.group_by:   # the hits come group after group; say which group each is in
        from index import group_hits, group_value
        groups = group_hits(hits, args.group_by)
    if args.json:
        rows = [h.__dict__ if groups is None else {**h.__dict__, "group": group_value(h, args.group_by)} for h in hits]
        print(json.dumps(rows, indent=2) if single else json.dumps({"query": name, "label": label, "results": rows}))
        return
    if not single:
        print(f"{name}" + (f"  (label {label})" if label is not None else ""))
    if reranked:
        print(f"re-ranked the {args.rerank} nearest candidates with the PDDM head")
    if not hits:
        print("no neighbours")
    rank = args.offset   # the next page goes on counting
    for value, members in groups if groups is not None else [(None, hits)]:
        if groups is not None:
            print(f"{args.group_by} = {json.dumps(value, ensure_ascii=False)}")
        for h in members:
            rank += 1
            print(f"{rank:>3}  {h.score:.4f}  d={h.distance:.4f}  {h.label or '-':<12} {h.id}")


def _print_vote(name: str, label: str | None, decided, hits: list, args, single: bool) -> None:
    import json

    if args.json:
        answer = {"label": decided.label, "confidence": decided.confidence, "votes": decided.votes,
                  "results": [h.__dict__ for h in hits]}
        print(json.dumps(answer, indent=2) if single else json.dumps({"query": name, "query_label": label, **answer}))
        return
    said = (f"{decided.label}  (confidence {decided.confidence:.2f}; votes "
            + ", ".join(f"{lb} {n}" for lb, n in decided.votes.items()) + ")") if decided.label is not None else \
        ("unknown  (no labelled gallery item" + (f" within {args.max_distance}" if args.max_distance is not None
                                                  else "") + ")")
    print(said if single else f"{name}" + (f"  (label {label})" if label is not None else "") + f"  ->  {said}")


def _is_tar(path: Path) -> bool:
    import tarfile

    return path.is_file() and tarfile.is_tarfile(path)


def _queries(paths: list[str]) -> tuple[list[tuple[str, str | None, Callable[[], bytes]]], list]:
    """(name, label, read) of each query: a file as given (no label), or every image in a folder or tar
    with its class folder as label (ImageFolder); read() returns the bytes. Also the tars opened."""
    out, tars = [], []
    for arg in paths:
        path = Path(arg)
        if path.is_file() and not _is_tar(path):
            out.append((arg, None, path.read_bytes))
            continue
        if not path.exists():
            raise CliError(f"cannot read image {arg}: no such file or folder")
        ids, labels, tar, _ = _scan(path, True)
        if tar is None:
            out += [(str(path / i), labels[i], (path / i).read_bytes) for i in ids]
        else:
            tf, members = tar
            tars.append(tf)
            out += [(f"{arg}:{i}", labels[i], lambda m=members[i], tf=tf: tf.extractfile(m).read()) for i in ids]
    if paths and not out:   # (no paths at all: a search by marked items alone)
        raise CliError(f"no query images in {' '.join(paths)}")
    return out, tars


def _reranker(embedder, n: int, k: int, offset: int = 0):
    """The artifact's PDDM head for --rerank N (CliError without one, or when N < k + offset)."""
    import model

    if n < k + offset:
        at_least = f"-k {k} + --offset {offset}" if offset else f"-k {k}"
        raise CliError(f"--rerank {n} must be at least {at_least}: it is the number of nearest candidates re-ordered")
    pddm = model.PDDM.from_artifact(embedder.artifact)
    if pddm is None:
        raise CliError(f"--rerank: the model {embedder.model_id} has no PDDM head (train one with --loss pddm)")
    return pddm


def _rerank(store, pddm, query, hits: list, k: int, offset: int = 0) -> list:
    """The best k of `hits` by PDDM score against their stored vectors after the best `offset` (cosine score and
    distance kept)."""
    import numpy as np

    kept = [(h, it) for h, it in zip(hits, store.get_many([h.id for h in hits])) if it is not None]
    if not kept:
        return []
    order, _ = pddm.rerank(query, np.stack([it.vector for _, it in kept]))
    return [kept[i][0] for i in order[offset:offset + k]]
