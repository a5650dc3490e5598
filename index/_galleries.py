"""Where each gallery of a data folder lives: the default one in DATA/index (as before there were
names), a named one in DATA/galleries/<name>/index. Names are lower-case letters, digits, - and _, so
that they are the same folder on every file system."""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from ._db import DB_NAME
from ._errors import InvalidItemError

log = logging.getLogger("simsearch.index")

DEFAULT_GALLERY = "default"
_DELETED = ".deleted-"   # a named gallery's folder on its way out: hidden from gallery_names
_RESTORING = ".simsearch-restore-"   # DATA/<this>NAME-*: a backup file on its way in (new_restore_folder)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_gallery_name(name: str) -> str:
    """The name, when it can name a gallery; InvalidItemError naming it otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidItemError(f"a gallery name is 1 to 63 lower-case letters, digits, - and _, starting with a "
                               f"letter or digit; got {str(name)[:80]!r}")
    return name


def gallery_path(data_dir: Path, name: str = DEFAULT_GALLERY) -> Path:
    """The store folder of gallery `name` in the data folder `data_dir` (it may not exist yet)."""
    name = check_gallery_name(name)
    return Path(data_dir) / "index" if name == DEFAULT_GALLERY else Path(data_dir) / "galleries" / name / "index"


def live_folders(data_dir: Path) -> tuple[Path, Path]:
    """The folders of `data_dir` that hold its galleries' stores, which the service opens, creates and deletes:
    DATA/index and DATA/galleries. Nothing else belongs in them (a backup put there would be served as a
    gallery, or taken away with one)."""
    return Path(data_dir) / "index", Path(data_dir) / "galleries"


def gallery_names(data_dir: Path) -> list[str]:
    """The galleries that have a store in `data_dir`, the default first (when it has one), then by name."""
    names = [DEFAULT_GALLERY] if (Path(data_dir) / "index" / DB_NAME).is_file() else []
    root = Path(data_dir) / "galleries"
    if root.is_dir():
        names += sorted(p.name for p in root.iterdir()
                        if _NAME.fullmatch(p.name) and p.name != DEFAULT_GALLERY and (p / "index" / DB_NAME).is_file())
    return names


def remove_gallery(data_dir: Path, name: str) -> None:
    """Delete the named gallery's folder. It is first renamed aside (one atomic step), so that from then on
    nothing lists or opens it, then removed. A reader that opened it just before the rename may still add
    SQLite's shared-memory file while it goes, so the removal is tried again; what is still left is
    removed by remove_deleted_galleries, at the service's next start."""
    if name == DEFAULT_GALLERY:   # its folder is the data folder's index/, beside the named galleries
        raise InvalidItemError("the default gallery is not removed this way")
    folder = gallery_path(data_dir, name).parent
    aside = folder.with_name(f"{_DELETED}{name}-{uuid.uuid4().hex[:8]}")
    folder.rename(aside)
    _remove_tree(aside)


def new_restore_folder(data_dir: Path, name: str) -> Path:
    """A new folder in the data folder (on its disk, so that a store received there takes gallery `name`'s place
    with one rename) that no listing takes for a gallery; what a killed process leaves of it goes with
    remove_deleted_galleries."""
    return Path(tempfile.mkdtemp(prefix=f"{_RESTORING}{name}-", dir=data_dir))


def remove_deleted_galleries(data_dir: Path) -> int:
    """Remove what remove_gallery left of deleted galleries' folders, and what a restore killed midway left of its
    folder (new_restore_folder); how many were found. Only the writer calls it, at its start, before any restore."""
    root = Path(data_dir) / "galleries"
    left = sorted(root.glob(_DELETED + "*")) if root.is_dir() else []
    left += sorted(Path(data_dir).glob(_RESTORING + "*")) if Path(data_dir).is_dir() else []
    for folder in left:
        _remove_tree(folder)
    return len(left)


def _remove_tree(folder: Path, attempts: int = 5) -> None:
    for attempt in range(1, attempts + 1):
        try:
            shutil.rmtree(folder)
            return
        except OSError as exc:
            if not folder.exists():
                return
            if attempt == attempts:
                log.warning("index: %s of a deleted gallery is left on disk (%s); the service removes it at its "
                            "next start", folder, exc)
                return
            time.sleep(0.02 * attempt)   # a reader's file appeared (or went) meanwhile
