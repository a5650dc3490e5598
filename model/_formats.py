"""Which image files can be read: Pillow's own formats, plus the HEIC/HEIF photos that phones take,
through pillow-heif when it is installed. Importing `model` registers it with Pillow, so the service,
`simsearch index build` and the dataset readers all read the same files."""
from __future__ import annotations

import lzma
import os
import tarfile
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Callable

from PIL import Image


def _register_heif() -> bool:
    try:
        import pillow_heif
    except ImportError:  # a platform without its wheels: HEIC stays unreadable, everything else works
        return False
    pillow_heif.register_heif_opener()
    return True


def _pillow_reads(fmt: str) -> bool:
    Image.init()
    return fmt in Image.OPEN


HEIF_READABLE = _register_heif()
AVIF_READABLE = _pillow_reads("AVIF")  # recent Pillow wheels carry their own AVIF decoder

#: Formats whose decoders can make a smaller image directly (`Image.draft`): libjpeg at 1/2 to 1/8
#: scale, pillow-heif from the HEIC's embedded thumbnail. MPO is a JPEG with more pictures after it
#: (cameras and phones write them); its first picture is read, by the JPEG decoder.
DRAFT_FORMATS = ("JPEG", "MPO", "HEIF")

#: File name endings read as images when a folder or tar is scanned (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
    *((".avif",) if AVIF_READABLE else ()),
    *((".heic", ".heif") if HEIF_READABLE else ()),
)


#: The split folders an ImageFolder may hold, matched in any case (Windows and Kaggle give Train/, Test/):
#: training reads its splits by them and `simsearch index build` labels by them, so an image gets one class.
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")

#: What opening, listing or reading a tar (compressed or not) that is cut short or corrupt raises.
DAMAGED_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (EOFError, tarfile.TarError, zlib.error, lzma.LZMAError,
                                                           OSError)


def common_folder(names: list[str]) -> tuple[str, list[str]]:
    """("wrap/pics/", the names below it): the folders every name lies in, one in the next ("" when there are
    none), and the names relative to them: the dataset root training descends to, and `index build` labels by."""
    prefix = ""
    while names and all("/" in n for n in names):
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1:
            break
        top = tops.pop()
        prefix += top + "/"
        names = [n.split("/", 1)[1] for n in names]
    return prefix, names


def readable_name(name: str) -> str:
    """A file name as it can be printed, written to JSON and stored as an id the service takes: unchanged when it
    is UTF-8 text an id may be; else each byte that is not UTF-8 written as \\xNN (a Latin-1 `café.jpg` from an
    old zip or share is `caf\\xe9.jpg`: Python holds such a byte as a lone surrogate, which no message, store or
    JSON answer takes), and each character no id may hold, and white space at either end, written as \\xNN or
    \\uNNNN (`new\\x0aline.jpg`), so that the item can be fetched, edited and deleted by its id over HTTP."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    if name == name.strip() and not any(map(_no_id_holds, name)):
        return name
    start, end = len(name) - len(name.lstrip()), len(name.rstrip())
    return "".join(_escaped(c) if _no_id_holds(c) or not start <= i < end else c for i, c in enumerate(name))


# Text direction overrides and isolates: "rtl\u202egpj.exe" shows as "rtlexe.jpg"
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _no_id_holds(c: str) -> bool:
    # the service's rule for ids and labels (app/_params.py's _has_control, which model cannot import): a control
    # character (C0, DEL, C1), a line or paragraph separator, a lone surrogate, a text direction override
    return unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") or c in _BIDI_CONTROLS


def _escaped(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def files_under(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder`, as sorted posix names relative to it: through linked folders (data is often
    laid out as folders of links), each link back to a folder it lies in skipped (so a loop ends; `folder`'s
    own parent folders count too, so a link to one of them does not lead outside `folder`), and
    hidden files and folders (`.DS_Store`, macOS's `._IMG_1.jpg`, `.thumbnails/`) left out."""
    found: list[str] = []

    def walk(path: str, prefix: str, above: frozenset) -> None:
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():  # follows links, as the names of a folder of links mean their targets
                    st = e.stat()
                    here = (st.st_dev, st.st_ino)
                    if here not in above:
                        walk(e.path, f"{prefix}{e.name}/", above | {here})
                elif e.is_file():  # a dangling link is neither, and is passed over
                    found.append(prefix + e.name)

    walk(os.fspath(folder), "", _folders_containing(folder))
    return sorted(found)


@dataclass(frozen=True)
class TarListing:
    """A tar's members named as the files of the folder it was made of (`list_tar`)."""

    files: dict[str, tarfile.TarInfo]   # name -> member: regular files, and hard links (a file's other names)
    folders: list[str]
    links: list[str]   # symbolic links, and hard links to a file the tar lacks: left out
    inside: bool   # made inside the folder (`tar cf x.tar -C photos .`): its names begin with ./


def list_tar(tar: tarfile.TarFile) -> TarListing:
    """The members of `tar` as `files_under` names a folder's files: relative posix names, a leading `./` taken
    off as a prefix (`./.thumbs/a.jpg` is `.thumbs/a.jpg`, not `thumbs/a.jpg`), and hidden members
    (`._IMG_1.jpg`, `.DS_Store`, anything in a `.thumbnails/`) left out, so that a tar of a folder holds the
    names the folder does."""
    files: dict[str, tarfile.TarInfo] = {}
    folders: list[str] = []
    links: list[str] = []
    stored: set[str] = set()   # the regular files' names as the tar holds them: what a hard link may name
    inside = False
    for m in tar.getmembers():
        inside |= m.name == "." or m.name.startswith("./")
        if m.isfile():
            stored.add(m.name)
        name = _member_name(m.name)
        if name is None:
            continue
        if m.issym() or (m.islnk() and m.linkname not in stored):   # a hard link's file must come before it
            links.append(name)
        elif m.isfile() or m.islnk():
            files[name] = m
        elif m.isdir():
            folders.append(name)
    return TarListing(files, folders, links, inside)


def _member_name(name: str) -> str | None:
    """A tar member's name relative to the folder the tar was made of; None for that folder itself and for a
    hidden member. A leading `/` goes as `./` does (a hand-made tar of `/abs/b/3.jpg` holds `abs/b/3.jpg`, as GNU
    tar and tarfile.add write it), and so do empty parts (`a//b.jpg`), so that no part of a name is empty."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    name = "/".join(part for part in name.split("/") if part)
    if not name or any(part.startswith(".") for part in name.split("/")):
        return None
    return name


def _folders_containing(folder: str | os.PathLike) -> frozenset:
    """(device, inode) of `folder` and of every folder it lies in, by the path given and by its real path
    (its links resolved): a link inside `folder` to any of them leads back to it, and is not followed."""
    st = os.stat(folder)  # one that is not there raises here, as the walk would
    seen = {(st.st_dev, st.st_ino)}
    for path in (os.path.abspath(folder), os.path.realpath(folder)):
        while (parent := os.path.dirname(path)) != path:
            path = parent
            try:
                st = os.stat(path)
            except OSError:  # a folder that cannot be looked at cannot be told apart; the walk goes on
                continue
            seen.add((st.st_dev, st.st_ino))
    return frozenset(seen)


def unreadable_reason(exc: BaseException, data: bytes | None = None) -> str:
    """Why a file did not decode, as `Type: what` for the line that names it: Pillow's "cannot identify image
    file <_io.BytesIO object at 0x...>" said in words (an empty file; not an image Pillow can read, with its
    size), any other error as it is. `data`: the file's bytes, where they were read."""
    from PIL import UnidentifiedImageError

    name = type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):
        if data is not None and not data:
            return f"{name}: empty file (0 bytes)"
        return f"{name}: not an image Pillow can read" + (f" ({len(data)} bytes)" if data is not None else "")
    return f"{name}: {exc}"


#: How many bytes of a file `looks_like_image` needs.
IMAGE_HEAD_BYTES = 16
# The first bytes of the formats read here (what a file of them begins with, whatever its name)
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_ISO_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")


def looks_like_image(head: bytes) -> bool:
    """Whether a file's first `IMAGE_HEAD_BYTES` bytes are those of an image format read here (JPEG, PNG, GIF,
    WebP, BMP, TIFF, HEIC/AVIF): what tells a photo saved without its ending (`IMG_0001`, `x.jpg_large`) from
    the notes and databases beside it, without decoding it."""
    if head.startswith(_IMAGE_MAGIC):
        return True
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":   # BMP: its reserved bytes are 0
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp" and head[8:12] in _ISO_BRANDS


def file_head(path: str | os.PathLike) -> bytes:
    """The first IMAGE_HEAD_BYTES bytes of the file at `path` (`looks_like_image`'s), b"" where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(IMAGE_HEAD_BYTES)
    except OSError:
        return b""


def member_head(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """file_head of a tar's member: b"" where it is no file or cannot be read (the tar cut short or damaged)."""
    try:
        f = tf.extractfile(member)
        return f.read(IMAGE_HEAD_BYTES) if f is not None else b""
    except DAMAGED_ARCHIVE_ERRORS:
        return b""


# Of the files without an image ending, how many (the first, in the order given) are read to tell an image saved
# without its ending, so that a tree of many other files is not read through
_SNIFFED_AT_MOST = 1000


def images_without_ending(names: list[str], head: Callable[[str], bytes]) -> list[str]:
    """Those of `names` without an image ending whose first bytes (`head(name)`: IMAGE_HEAD_BYTES of it, b"" where
    it cannot be read) are an image's (`looks_like_image`: a photo saved as `IMG_0001` or `x.jpg_large`): of the
    first 1,000 such names, so that a tree of many other files is not read through. What train, evaluate, index
    build and the upload and search commands name as "not read"."""
    unlisted = [n for n in names if not n.lower().endswith(IMAGE_EXTENSIONS)][:_SNIFFED_AT_MOST]
    return [n for n in unlisted if looks_like_image(head(n))]
