"""A consistent copy of a store while it serves: SQLite's online backup of the record of truth.

The FAISS snapshot is not copied: it is derived, and a store opened without one rebuilds it from the
database. The copy is taken in one step inside one read transaction, so it is the store as it was at
one moment (every write committed before it, none after it), and WAL readers never block the
writer that keeps serving meanwhile.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from . import _db
from ._errors import StorageError, StoreError


def backup(source: Path, dest: Path) -> dict:
    """Copy the store in folder `source` (the one holding store.sqlite3, e.g. DATA/index) into the
    new or empty folder `dest`, which is then a store of its own. Returns what the copy holds:
    {"items", "last_seq", "model_id", "dim", "bytes"}. Raises StoreError naming the folder when
    `source` holds no store or `dest` is not empty."""
    source, dest = Path(source), Path(dest)
    src_db = source / _db.DB_NAME
    if not src_db.is_file():
        raise StoreError(f"no store at {source} (no {_db.DB_NAME} there)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} is not an empty folder; a backup goes into a new or empty one")
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / (_db.DB_NAME + ".part")
    try:
        src, out = _db.connect(src_db, read_only=True), sqlite3.connect(part)
        try:
            src.backup(out)  # one step (pages=-1): one read transaction, one moment of the store
        finally:
            out.close()
            src.close()
        copy = _db.connect(part, read_only=True)
        try:
            check = copy.execute("PRAGMA integrity_check").fetchone()[0]
            meta = _db.get_meta(copy)
            items = copy.execute("SELECT count(*) FROM items").fetchone()[0]
        finally:
            copy.close()
        if check != "ok":
            raise StoreError(f"the copy of {source} failed SQLite's integrity check: {check}")
        part.replace(dest / _db.DB_NAME)  # only a checked copy gets the name a store is opened by
    except sqlite3.OperationalError as exc:
        if _db.disk_refusal(exc) != sqlite3.SQLITE_FULL:
            raise
        raise StorageError(f"the disk holding {dest} is full ({_db.free_space(dest)}): the copy needs about "
                           f"{src_db.stat().st_size / 1e6:.1f} MB; nothing was left there", full=True) from None
    finally:
        # the journal of a failed copy too, and the -wal and -shm the check's read-only connection leaves
        # beside a copy in WAL mode (it cannot remove them; nothing was written to them)
        for suffix in ("", "-journal", "-wal", "-shm"):
            part.with_name(part.name + suffix).unlink(missing_ok=True)
    return {"items": items, "last_seq": int(meta.get("last_seq", 0)), "model_id": meta.get("model_id"),
            "dim": int(meta["dim"]) if "dim" in meta else None, "bytes": (dest / _db.DB_NAME).stat().st_size}
