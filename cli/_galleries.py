"""What the gallery commands share (index build/stats/..., search, classify, upload, copy, reembed, edit): the
--data/--gallery/--model/--milvus-uri options, opening a gallery's store and its model, reading a folder or tar
of images with their labels and metadata, and the query and filter arguments. And `simsearch galleries create`,
which makes a named gallery in a running service (PUT /galleries/NAME)."""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ._env import ClientEnv
from ._errors import CliError

if TYPE_CHECKING:   # index (FAISS) is imported by the commands that open a gallery, when they run
    import tarfile

    from index import GalleryStore
    from model import TarListing

# The longest side of the thumbnails `index build` stores: the service's SIMSEARCH_THUMBNAIL_SIZE default
# (app/_settings.py), so that a gallery's items get one size whether built here or sent to POST /index.
THUMB_PX = 128


def register(sub: argparse._SubParsersAction) -> None:
    """`simsearch galleries`: the named galleries of a running service, over its HTTP API."""
    p = sub.add_parser("galleries", help="make a named gallery in a running service (create)",
                       description="The named galleries of a running `simsearch serve`, over its HTTP API. "
                                   "(`simsearch index galleries --data DATA` lists those of a data folder.)")
    gsub = p.add_subparsers(dest="galleries_command", required=True, metavar="SUBCOMMAND")
    c = gsub.add_parser("create", help="make a named gallery, empty (nothing changes when it exists already)",
                        description="Make the gallery NAME in a running service (PUT /galleries/NAME): empty, ready "
                                    "for `simsearch index upload --gallery NAME`. Where the service makes galleries "
                                    "only on request (SIMSEARCH_CREATE_GALLERIES_ON_WRITE=false, `serve "
                                    "--no-create-galleries-on-write`), a write to a name no gallery has is refused, "
                                    "so that a typo stores nothing. A gallery that exists already is left as it is "
                                    "(exit status 0).")
    c.add_argument("name", metavar="NAME", help="the gallery's name: 1 to 63 lower-case letters, digits, - and _")
    c.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    c.add_argument("--api-key", help="the service's API key for writes (default $SIMSEARCH_API_KEY, else the first "
                                     "key of $SIMSEARCH_API_KEY_FILE)")
    c.add_argument("--timeout", type=float, default=60, help="seconds to wait for the answer (60)")
    c.set_defaults(func=_create)


def _create(args) -> int:
    """`simsearch galleries create NAME --url URL`: PUT /galleries/NAME, and one line saying what happened."""
    from urllib.parse import quote

    import httpx

    from . import _http

    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {}, timeout=args.timeout) as client:
            r = _http.request(client, "PUT", f"/galleries/{quote(args.name, safe='')}")
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    if r.status_code in (200, 201):
        count = r.json().get("count")
        print(f"made gallery {args.name!r} in {url}" if r.status_code == 201 else
              f"gallery {args.name!r} exists already in {url} ({count} items): nothing changed")
        return 0
    if r.status_code == 405 and '"method_not_allowed"' in r.text:
        raise CliError(f"the service at {url} makes no gallery on request (a simsearch from before PUT "
                       f"/galleries/NAME): its first write to it makes one (`simsearch index upload SOURCE --url "
                       f"{url} --gallery {args.name}`)")
    raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))


def made_gallery_line(answer: dict, gallery: str) -> str | None:
    """What `index upload` says when a POST /index answer tells that this write made the gallery (its
    `gallery_created`), so that a misspelt --gallery shows: the line, or None."""
    if not answer.get("gallery_created"):
        return None
    return (f"made gallery {gallery!r} (the service had none of that name; `simsearch galleries create` makes one "
            "beforehand, and `serve --no-create-galleries-on-write` refuses a write to a name it lacks)")


def default_data() -> str:
    return ClientEnv.read().data_dir


def common_options(p: argparse.ArgumentParser, model: bool, milvus: bool = False) -> None:
    p.add_argument("--data", default=default_data(), action=DataFolder,
                   help="data directory; the index lives in DATA/index (default $SIMSEARCH_DATA_DIR or ./data)")
    gallery_option(p)
    if model:
        p.add_argument("--model", help="model artifact (.safetensors), or the name of a bundled one (`simsearch "
                                       "models` lists them); default: the bundled model that made the gallery's "
                                       "vectors, the bundled cifar10 Hybrid-1 for a new gallery")
    if milvus:
        milvus_option(p)


class MilvusUriFromEnv(str):
    """$SIMSEARCH_MILVUS_URI as the default of --milvus-uri: set aside by a --data given on the command line."""


class DataFolder(argparse.Action):
    """--data given on the command line: the folder is meant, even where $SIMSEARCH_MILVUS_URI is set (as in
    the service's container); an explicit --milvus-uri still wins."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        if isinstance(getattr(namespace, "milvus_uri", None), MilvusUriFromEnv):
            namespace.milvus_uri = None


def milvus_option(p: argparse.ArgumentParser) -> None:
    env = ClientEnv.read().milvus_uri
    p.add_argument("--milvus-uri", default=MilvusUriFromEnv(env) if env else None,
                   help="the galleries in Milvus instead of DATA, as the service's SIMSEARCH_MILVUS_URI (default "
                        "$SIMSEARCH_MILVUS_URI unless --data is given; its credentials from $SIMSEARCH_MILVUS_TOKEN, "
                        "its database from $SIMSEARCH_MILVUS_DB)")


def gallery_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", default="default", metavar="NAME",
                   help="a named gallery (DATA/galleries/NAME/index; through a service, its ?gallery=NAME) instead "
                        "of the default one")


def gallery_folder(data: str, gallery: str) -> Path:
    """The store folder of --gallery in --data; CliError for a name no gallery can have."""
    import index

    try:
        return index.gallery_path(Path(data), gallery)
    except index.InvalidItemError as exc:
        raise CliError(f"--gallery: {exc}") from None


def embedder_from(path: str | None):
    import model

    if path:
        try:
            artifact = model.find_artifact(path)   # a file, else a bundled model's name
        except model.ArtifactError as exc:
            raise CliError(f"--model {exc}") from None
    else:
        artifact = model.default_artifact_path("cifar10")
    if not artifact.exists():
        raise CliError(f"no model artifact at {artifact}" + ("" if path else "; pass --model"))
    try:
        return model.Embedder.from_file(artifact)
    except model.ArtifactError as exc:
        said = str(exc)   # most ArtifactErrors start with the file already
        raise CliError(f"--model {said}" if said.startswith(str(artifact)) else f"--model {artifact}: {said}") from None


def embedder_for(path: str | None, data: str, gallery: str = "default", milvus_uri: str | None = None):
    """--model's artifact. Without it, the bundled artifact that made the gallery's vectors, so that a gallery
    indexed with hybrid1-mnist, say, is searched and added to with it; the default one for a new gallery."""
    if path:
        return embedder_from(path)
    import index
    import model

    # no gallery yet: the default model (what is wrong with one that cannot be read is said when it opens)
    if milvus_uri:
        try:
            store = open_milvus(milvus_uri, True, None, gallery)
        except CliError:
            return embedder_from(None)
        with store:
            recorded, where = store.model_id, f"gallery {gallery!r} in Milvus"
    else:
        folder = gallery_folder(data, gallery)
        try:
            with index.StoreReader(folder) as reader:
                recorded, where = reader.model_id, f"the index at {folder}"
        except index.StoreError:
            return embedder_from(None)
    found = model.bundled_artifact(recorded)
    earlier = model.earlier_bundled(recorded) if found is None else None
    if earlier is not None:
        raise CliError(f"{where} holds vectors of model {recorded!r}, {earlier.describe()}: pass that file with "
                       "--model (or move the gallery to a model you have: `simsearch index reembed`)")
    if found is None:
        raise CliError(f"{where} holds vectors of model {recorded!r}, which is none of the bundled models: pass "
                       "that model's artifact with --model (or build the gallery again, elsewhere, with the model "
                       "you have)")
    return embedder_from(str(found))


def open_store(data: str, read_only: bool, embedder=None, kind: str | None = None, locked_hint: str = "",
                gallery: str = "default", milvus_uri: str | None = None,
                vectors: tuple[int, str] | None = None) -> GalleryStore:
    """The store of `gallery` in DATA (DATA/index for the default one), or in Milvus at milvus_uri, for
    the vectors of `embedder` (or `vectors`: their dim and model id; neither: what the store records);
    CliError for every store error, `locked_hint` appended when another process (a running service)
    holds it for writing."""
    import index

    if embedder is not None:
        vectors = (embedder.dim, embedder.model_id)
    if milvus_uri:
        return open_milvus(milvus_uri, read_only, kind, gallery, vectors)
    path = gallery_folder(data, gallery)
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


def milvus_credentials() -> tuple[str | None, str | None]:
    """(token, database) for Milvus, from $SIMSEARCH_MILVUS_TOKEN and $SIMSEARCH_MILVUS_DB, as the service reads
    them."""
    env = ClientEnv.read()
    return env.milvus_token, env.milvus_db


def milvus_gallery_names(uri: str) -> list[str]:
    import index

    return index.milvus_gallery_names(uri, *milvus_credentials())


def open_milvus(uri: str, read_only: bool, kind: str | None, gallery: str, vectors: tuple[int, str] | None = None):
    import importlib.util

    import index

    if importlib.util.find_spec("pymilvus") is None:
        raise CliError("--milvus-uri needs pymilvus installed (pip install 'simsearch[milvus]')")
    token, db_name = milvus_credentials()
    cfg = index.MilvusConfig(uri, token=token, db_name=db_name, gallery=gallery,
                             dim=vectors[0] if vectors else None, model_id=vectors[1] if vectors else None,
                             index=kind, read_only=read_only)
    try:
        return index.MilvusStore.open(cfg)
    except index.StoreError as exc:   # mismatch, unreachable, bad --index or --gallery
        raise CliError(str(exc)) from None


class ImageSource:
    """The images of SOURCE, a folder or a tar (`scan`): `ids`, their paths relative to SOURCE (sorted; a name that
    is not UTF-8 as `model.readable_name` writes it), `labels`, each id's label (None: none), `links`, how many symbolic
    links a tar held (left out), and `read(id)`, an image's bytes. A tar stays open until `close()`."""

    def __init__(self, path: Path, ids: list[str], labels: dict[str, str | None], tar: tarfile.TarFile | None = None,
                 members: dict[str, tarfile.TarInfo] | None = None, links: int = 0,
                 names: dict[str, str] | None = None):
        self.path, self.ids, self.labels, self.links = path, ids, labels, links
        self._tar, self._members = tar, members
        self._names = names or {}   # id -> the file's real name, where they differ (a name that is not UTF-8)

    @property
    def is_tar(self) -> bool:
        """Whether SOURCE is a tar, whose images are read one after the other (a folder's in any order)."""
        return self._tar is not None

    def read(self, id_: str) -> bytes:
        """The bytes of image `id_`; CliError naming a tar whose member is cut short."""
        from model import DAMAGED_ARCHIVE_ERRORS

        if self._tar is None:
            return (self.path / self._names.get(id_, id_)).read_bytes()
        try:
            return self._tar.extractfile(self._members[id_]).read()
        except DAMAGED_ARCHIVE_ERRORS as exc:
            raise _damaged(self.path, exc) from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def scan(source: Path, labels: bool) -> ImageSource:
    """The images of a folder or a tar, with their labels (`labels_of`). A tar is read as the folder it was
    made of (model.list_tar: hidden members, `._IMG_1.jpg`, `.DS_Store`, anything in a `.folder/`, left out, and
    its symbolic links, counted) with a single top folder descended (a tar of `photos/` has the ids a build of
    `photos/` has; one made inside it, `./cat/1.jpg`, is descended no further). A file name that is not UTF-8
    (Latin-1, from an old zip or share) gets the id `model.readable_name` writes, said in one line on stderr; a tar
    cut short or damaged is a CliError naming it."""
    import tarfile

    from model import (DAMAGED_ARCHIVE_ERRORS, IMAGE_EXTENSIONS, file_head, files_under, images_without_ending,
                       list_tar, member_head, readable_name)

    if source.is_dir():
        try:
            names = files_under(source)
        except OSError as exc:  # a folder inside that cannot be listed
            raise CliError(f"{source}: cannot list {exc.filename}: {exc.strerror}") from None
        written, real = _readable_names(source, names)
        ids = [n for n in written if n.lower().endswith(IMAGE_EXTENSIONS)]
        _say_not_read(source, images_without_ending(written, lambda w: file_head(source / real.get(w, w))), [])
        return ImageSource(source, ids, _labels_said(source, ids, labels, written), names=real)
    if is_tar(source):
        tf = None
        try:
            tf = tarfile.open(source)
            listing = list_tar(tf)
        except DAMAGED_ARCHIVE_ERRORS as exc:
            if tf is not None:
                tf.close()
            raise _damaged(source, exc) from None
        strip = len(top) + 1 if (top := _top_folder(listing)) else 0
        stored = {name[strip:]: m for name, m in listing.files.items()}
        written, real = _readable_names(source, list(stored))
        members = {w: stored[real.get(w, w)] for w in written}
        ids = sorted(w for w in written if w.lower().endswith(IMAGE_EXTENSIONS))
        _say_not_read(source, images_without_ending(written, lambda w: member_head(tf, members[w])),
                      [readable_name(link[strip:]) for link in listing.links])
        return ImageSource(source, ids, _labels_said(source, ids, labels, written), tf, members, len(listing.links))
    raise CliError(f"source {source} is neither a folder nor a tar archive")


_NOT_READ_SHOWN = 5   # entries of the "not read" line shown


def _say_not_read(source: Path, unlisted: list[str], links: list[str]) -> None:
    """One line on stderr naming what in SOURCE is left out that a user may take for an image: files that begin as
    an image does but have no image ending (the ending chooses what is read), and a tar's links."""
    why = {**{n: "an image without an image ending" for n in unlisted}, **{n: "a link in a tar" for n in links}}
    if why:
        shown = [f"{n} ({w})" for n, w in sorted(why.items())[:_NOT_READ_SHOWN]]
        more = f" and {len(why) - _NOT_READ_SHOWN} more" if len(why) > _NOT_READ_SHOWN else ""
        print(f"{source}: not read: {', '.join(shown)}{more}", file=sys.stderr)


def _damaged(path: Path, exc: BaseException) -> CliError:
    return CliError(f"{path}: the archive is damaged or cut short ({type(exc).__name__}: {exc}); copy it again")


def _readable_names(source: Path, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the names as `model.readable_name` writes them, {written: real name} where they differ), said in one line on
    stderr when some do. One that written so is another file's real name (a real `caf\\xe9.jpg` beside the
    Latin-1 `café.jpg`: rare) is left out, and named."""
    from model import readable_name

    real = {w: n for n in names if (w := readable_name(n)) != n}
    if not real:
        return names, {}
    for w in sorted(set(real) & set(names)):
        print(f"skipped {w}: its name is not UTF-8 or holds what an id cannot, and written readably it is another "
              "file's name", file=sys.stderr)
        del real[w]
    if real:
        many = len(real) != 1
        whose = "their ids write" if many else "its id writes"
        print(f"{source}: {len(real)} file name{'s are' if many else ' is'} not UTF-8 or hold{'' if many else 's'} "
              f"what an id cannot (a control character, white space at an end); {whose} each such byte or "
              f"character as \\xNN: {'e.g. ' if many else ''}{min(real)}", file=sys.stderr)
    return [w for n in names if (w := readable_name(n)) == n or real.get(w) == n], real


def _top_folder(listing: TarListing) -> str | None:
    """The one folder at the top of a tar that holds all else, to be descended into; None
    for a tar made inside its folder (`tar cf x.tar -C photos .`), of several, or of one file."""
    tops = {name.split("/", 1)[0] for name in [*listing.files, *listing.folders, *listing.links]}
    if listing.inside or len(tops) != 1:
        return None
    top = tops.pop()
    return None if top in listing.files or top in listing.links else top


def links_note(links: int) -> str:
    """What the summary line says of a tar's links left out (symbolic, or hard links to a file the tar lacks; ""
    when it has none)."""
    return f" ({links} link{'s' if links != 1 else ''} in it left out)" if links else ""


def _labels_said(source: Path, ids: list[str], labels: bool, names: list[str]) -> dict[str, str | None]:
    """labels_of, and what a user may not expect of them said on stderr, as `simsearch train` says it of its
    classes: folders beside train/ that give no label, and labels that differ only in case."""
    said = labels_of(ids, labels, names, notes := [])
    for note in notes:
        print(f"{source}: {note}", file=sys.stderr)
    return said


#: Why a folder beside train/ gives no label (what `simsearch train` says of it, training/_data.py)
_BESIDE_SPLITS = "beside train/, only test/ and a validation folder, val/, valid/ or validation/, are"


def labels_of(ids: list[str], labels: bool, names: list[str] | None = None,
              notes: list[str] | None = None) -> dict[str, str | None]:
    """Each id's label, the class `simsearch train` makes of the image (ImageFolder), given `names`, every file
    under SOURCE (the ids when not given). That is its top folder under the dataset's root (photos/shoes/2023/IMG.jpg:
    "shoes"), or, where the root is split into train/ and test/ (or a validation folder), or holds just one of those,
    its top folder under the split (train/cat/x.jpg: "cat"). Split folders are named in any case (Train/, TEST/). The
    root is SOURCE, or the one folder all its files lie in, descended as training descends it (wrap/pics/cats/1.jpg:
    "cats") where training finds classes there. An image directly in the root or in a split folder has none, and so
    does one in a folder beside the split folders (train/ and test/ beside extra/: training reads no class from
    extra/), and every image with `labels` off. `notes` gets a line for each such folder beside the splits, and for
    labels that differ only in case (train/Yellow/ and test/yellow/: two labels, as they are two classes)."""
    from model import SPLIT_FOLDERS, common_folder

    if not labels:
        return dict.fromkeys(ids)
    names = ids if names is None else names
    root, _ = common_folder(names)
    if root and not _has_classes([n[len(root):] for n in names]):
        root = ""   # training finds no classes there: the folders under SOURCE are the labels
    rel = [n[len(root):] for n in names]
    real_tops = sorted({n.split("/", 1)[0] for n in rel if "/" in n})
    tops = {t.lower() for t in real_tops}
    for kind in tops & set(SPLIT_FOLDERS):   # train/ beside Train/: which one is meant is a guess, as training says
        both = [t for t in real_tops if t.lower() == kind]
        if len(both) > 1:
            raise CliError(f"{root or './'} holds both {both[0]}/ and {both[1]}/ (split folders are read in any case, "
                           "as `simsearch train` reads them); keep one of them")
    split = ("train" in tops and bool(tops & set(SPLIT_FOLDERS[1:]))) or (len(tops) == 1 and tops <= set(SPLIT_FOLDERS))
    out: dict[str, str | None] = {}
    beside: set[str] = set()
    for i in ids:
        parts = i[len(root):].split("/")
        if split and parts[0].lower() in SPLIT_FOLDERS:
            parts = parts[1:]
        elif split and len(parts) >= 2:   # a folder beside the split folders: no class of training's
            beside.add(parts[0])
            parts = parts[-1:]
        out[i] = (parts[0] or None) if len(parts) >= 2 else None
    if notes is not None:
        if beside:
            notes.append(f"not labelled: {', '.join(f'{root}{f}/' for f in sorted(beside))} ({_BESIDE_SPLITS}); "
                         f"{'its' if len(beside) == 1 else 'their'} images are indexed without a label")
        notes.extend(_case_only(sorted({v for v in out.values() if v is not None})))
    return out


def _case_only(labels: list[str]) -> list[str]:
    """A line for each group of `labels` that differ only in case."""
    by_case: dict[str, list[str]] = {}
    for label in labels:
        by_case.setdefault(label.lower(), []).append(label)
    return [f"labels {' and '.join(same)} differ only in case: they are {len(same)} labels, as `simsearch train` "
            f"makes {len(same)} classes of them" for same in by_case.values() if len(same) > 1]


def _has_classes(names: list[str]) -> bool:
    """Whether training reads classes from the files `names` below a root it descended to: train/ beside test/
    or a validation folder, or 2 or more class folders with images (one class beside loose images, it refuses;
    training/_data.py, _imagefolder_parts)."""
    from model import IMAGE_EXTENSIONS, SPLIT_FOLDERS

    tops = {n.split("/", 1)[0].lower() for n in names if "/" in n}
    if "train" in tops and bool(tops & set(SPLIT_FOLDERS[1:])):
        return True
    return len({n.split("/", 1)[0] for n in names if "/" in n and n.lower().endswith(IMAGE_EXTENSIONS)}) >= 2


def model_input(data: bytes, embedder, crop=None, name: str = "an image"):
    """Image bytes -> the model's input array, made as the service makes it from an upload (the decoder's
    draft mode for photos, EXIF orientation, the region `crop`), so that one image gets one vector whether
    it was indexed or searched here or through the service. Damaged EXIF data (the image is used without EXIF
    orientation) is said in a line on stderr naming the file, `name`. Runs in worker threads."""
    from model import DAMAGED_EXIF, exif_notes, open_image

    with exif_notes() as said, open_image(data) as im:
        array = embedder.preprocess(im, crop, owned=True)
    for why in said:
        print(f"{name}: {DAMAGED_EXIF.format(why=why)}", file=sys.stderr)
    return array


def model_threads(threads: int | None) -> None:
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


EXIF_HELP = ("also store when each photo was taken and with what camera, from its EXIF: {\"taken\": "
              "\"2024-06-01T14:03:22+02:00\", \"camera\": \"Apple iPhone 13\"} (each only when the photo "
              "records it), so that searches can filter on them (where={\"taken\": {\"$gte\": \"2024\"}})")


GPS_HELP = ("also store where each photo was taken, from its EXIF GPS: {\"lat\": 48.858370, \"lon\": 2.294481, "
             "\"altitude\": 35.0} (decimal degrees, south and west negative; only for a photo that records a fix), "
             "so that searches can filter on a box (where={\"lat\": {\"$gte\": 48.8, \"$lte\": 48.9}, \"lon\": "
             "{\"$gte\": 2.2, \"$lte\": 2.4}}). Off unless asked: a location is personal data")


METADATA_HELP = ("each image's metadata from a file: JSON Lines (.jsonl, one object a line: {\"id\": "
                  "\"cat/001.jpg\", \"album\": \"trip\", \"year\": 2024}, the id being the path relative to "
                  "SOURCE) or CSV (.csv, a header with an id column; every other cell a string value); added to "
                  "{width, height}, and taking their place when it names them")


def metadata_for(path: str | None, ids: list[str]) -> dict[str, dict]:
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


def crop_arg(text: str | None):
    """--crop as a model.Crop, or None; CliError naming what is wrong."""
    if text is None:
        return None
    import model

    try:
        return model.parse_crop(text)
    except ValueError as exc:
        raise CliError(f"--crop: {exc}") from None


# What to do about a repeated key in a filter: what the service's 422 says (app/_bodies.py).
WHERE_HINT = ' (several conditions on one key go in one object, {"n": {"$gte": 1, "$lt": 5}}, or in $and)'


def user_json(text: str | bytes, what: str, hint: str = "", **loads_kw) -> Any:
    """JSON a user gives (an option's value, a line of a file) parsed as json.loads parses it (`loads_kw`
    passed on), except that an object giving one key twice is refused, as the service refuses it: CliError
    "`what` gives the key 'K' twice in one object ..." (and `hint`). ValueError as json.loads for what is not
    JSON, for the caller to say where."""
    import json

    from index import RepeatedKey, unique_keys

    try:
        return json.loads(text, object_pairs_hook=unique_keys, **loads_kw)
    except RepeatedKey as exc:
        raise CliError(f"{what} gives the key {exc.args[0]!r} twice in one object, and only one of the two could be "
                       f"used: give each key once{hint}") from None


def check_label_arg(label: str | None) -> None:
    """CliError for --label '': over --url an empty label parameter is no label at all (the service's), so that
    it would select every item there and the items labelled "" in DATA; refused in both modes alike, saying how to
    select the unlabelled items."""
    if label == "":
        raise CliError("--label '': give a label; to select the unlabelled items, give --where "
                       "'{\"$label\": {\"$exists\": false}}' (and for items whose label is the empty string, which "
                       "only the Python API stores, --where '{\"$label\": \"\"}')")


def where_arg(text: str | None) -> dict | None:
    """--where parsed and checked, or None; CliError naming what is wrong."""
    import index

    if not text:
        return None
    try:
        where = user_json(text, "--where", WHERE_HINT)
    except ValueError as exc:
        raise CliError(f"--where {text!r} is not valid JSON: {exc}") from None
    try:
        index.check_where(where)
    except index.InvalidItemError as exc:
        raise CliError(f"--{exc}") from None
    return where


def is_tar(path: Path) -> bool:
    import tarfile

    return path.is_file() and tarfile.is_tarfile(path)


def queries(paths: list[str]) -> tuple[list[tuple[str, str | None, Callable[[], bytes]]], list[ImageSource]]:
    """(name, label, read) of each query: a file as given (no label), or every image in a folder or tar
    with its class folder as label (ImageFolder); read() returns the bytes. Also the folders and tars
    scanned, to close."""
    out, sources = [], []
    for arg in paths:
        path = Path(arg)
        if path.is_file() and not is_tar(path):
            out.append((arg, None, path.read_bytes))
            continue
        if not path.exists():
            raise CliError(f"cannot read image {arg}: no such file or folder")
        source = scan(path, True)
        sources.append(source)
        out += [(f"{arg}:{i}" if source.is_tar else str(path / i), source.labels[i], partial(source.read, i))
                for i in source.ids]
    if paths and not out:   # (no paths at all: a search by marked items alone)
        raise CliError(f"no query images in {' '.join(paths)}")
    return out, sources
