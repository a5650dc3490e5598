"""Where each gallery of a data folder lives: the default one in DATA/index (as before there were
names), a named one in DATA/galleries/<name>/index. Names are lower-case letters, digits, - and _, so
that they are the same folder on every file system."""
from __future__ import annotations

import re
from pathlib import Path

from ._db import DB_NAME
from ._errors import InvalidItemError

DEFAULT_GALLERY = "default"
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


def gallery_names(data_dir: Path) -> list[str]:
    """The galleries that have a store in `data_dir`, the default first (when it has one), then by name."""
    names = [DEFAULT_GALLERY] if (Path(data_dir) / "index" / DB_NAME).is_file() else []
    root = Path(data_dir) / "galleries"
    if root.is_dir():
        names += sorted(p.name for p in root.iterdir()
                        if _NAME.fullmatch(p.name) and p.name != DEFAULT_GALLERY and (p / "index" / DB_NAME).is_file())
    return names
