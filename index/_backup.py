"""A consistent copy of a store while it serves: SQLite's online backup of the record of truth.

The FAISS snapshot is not copied: it is derived, and a store opened without one rebuilds it from the
database. The copy is taken in one step inside one read transaction, so it is the store as it was at
one moment (every write committed before it, none after it), and WAL readers never block the
writer that keeps serving meanwhile.

backup_galleries copies every gallery of a data folder that way, one after the other (each at its own
moment), into a staging folder inside the destination, and moves them to their places only when all are
copied and checked: a backup that fails, or is interrupted, leaves no half-made copy behind.

backup_needs says how much room a copy may take (the service checks its temporary folder's free space with it
before GET /galleries/NAME/backup copies there), and receive_backup places such a copy, downloaded, as a
gallery of a new data folder, checked first, the same way: a download cut off leaves nothing behind.
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import sqlite3
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from . import _db
from ._errors import StorageError, StoreError
from ._galleries import DEFAULT_GALLERY, check_gallery_name, gallery_names, gallery_path, live_folders
from ._incomplete import INCOMPLETE_NAME, incomplete, mark_incomplete

# Where backup_galleries copies before the copies take their places; one left by a backup killed midway
# is all a retry finds in DEST, and the retry removes it.
STAGE = ".simsearch-backup.part"


def backup(source: Path, dest: Path) -> dict:
    """Copy the store in folder `source` (the one holding store.sqlite3, e.g. DATA/index) into the
    new or empty folder `dest`, which is then a store of its own. Returns what the copy holds:
    {"items", "last_seq", "model_id", "dim", "bytes"}. Raises StoreError naming the folder when
    `source` holds no store or `dest` is not empty. A copy that fails leaves `dest` as it found it (the
    folders it made for it removed)."""
    source, dest = Path(source), Path(dest)
    _check_source(source)
    _check_empty(dest)
    made = _make_folder(dest)
    try:
        return _copy(source, dest, shown=dest, needs=(source / _db.DB_NAME).stat().st_size)
    except BaseException:
        _remove_made(made)
        raise


def backup_galleries(data_dir: Path, dest: Path, names: Iterable[str] | None = None) -> list[dict]:
    """Back up the galleries of the data folder `data_dir` (every one with a store, or those `names`) into
    `dest`, a new or empty folder outside DATA/index and DATA/galleries, laid out as a data folder: the
    default gallery in DEST/index, a named one in DEST/galleries/NAME/index, so that `serve --data DEST`
    serves them under the same names. Each is a consistent copy (backup) holding every write acknowledged
    before this call began. Returns one dict per gallery, in order: backup's keys plus "gallery" and "path"
    (its folder in `dest`), or {"gallery", "deleted": True} for a listed gallery deleted before its copy began.
    Raises StoreError (StorageError for a full disk) and OSError; then `dest` is left as it was found."""
    data_dir, dest = Path(data_dir), Path(dest)
    explicit = names is not None
    names = list(names) if explicit else gallery_names(data_dir)
    if explicit:
        for name in names:
            _check_source(gallery_path(data_dir, name))
    elif not names:
        raise StoreError(f"no store at {gallery_path(data_dir)} (no {_db.DB_NAME} there) and no named gallery in "
                         f"{live_folders(data_dir)[1]}: nothing to back up")
    _check_outside(data_dir, dest)
    stage = dest / STAGE
    if dest.is_dir() and [p.name for p in dest.iterdir()] == [STAGE]:
        shutil.rmtree(stage)  # what a backup killed midway left: never a copy of its own
    _check_empty(dest)
    sources = [gallery_path(data_dir, name) for name in names]
    needs = sum(_size(src / _db.DB_NAME) for src in sources)
    made = _make_folder(dest)
    moved: list[Path] = []
    try:
        stage.mkdir()
        results = []
        for name, src in zip(names, sources):
            if not explicit and not (src / _db.DB_NAME).is_file():
                results.append({"gallery": name, "deleted": True})  # deleted since it was listed
                continue
            try:
                copied = _copy(src, gallery_path(stage, name), shown=dest, needs=needs)
            except StoreError:
                if explicit or (src / _db.DB_NAME).is_file():
                    raise
                folder = gallery_path(stage, name)  # its store went as the copy began: no folder for it
                shutil.rmtree(folder if name == DEFAULT_GALLERY else folder.parent, ignore_errors=True)
                results.append({"gallery": name, "deleted": True})
                continue
            results.append({"gallery": name, "path": gallery_path(dest, name), **copied})
        for child in sorted(stage.iterdir()):  # index, galleries: each one rename
            if child.is_dir() and not any(child.iterdir()):
                child.rmdir()
                continue
            child.replace(dest / child.name)
            moved.append(dest / child.name)
        stage.rmdir()
        return results
    except BaseException:
        for path in [stage, *moved]:
            shutil.rmtree(path, ignore_errors=True)
        _remove_made(made)
        raise


def backup_needs(source: Path) -> int:
    """The most bytes a copy of the store in folder `source` can take: its database and the WAL beside it (the
    copy holds the pages of both that are in use, and no more)."""
    db = Path(source) / _db.DB_NAME
    return _size(db) + _size(db.with_name(db.name + "-wal"))


def receive_backup(dest: Path, name: str, write: Callable[[BinaryIO], dict | None],
                   model: tuple[str, int] | None = None) -> dict:
    """Make the new or empty folder `dest` a data folder holding gallery `name` (DEST/index for the default one,
    DEST/galleries/NAME/index for a named one): `write(file)` writes the store's database, a copy as backup makes
    it (GET /galleries/NAME/backup's download), into a file in a staging folder inside `dest`; it is checked
    (SQLite's integrity check, a store's record) and only then moved to its place. `write` returns None, or, for
    the copy of a store marked incomplete, mark_incomplete's keyword arguments (command, source, said): the copy
    takes its place marked, as backup's copy of a part is. Returns backup's keys plus "gallery", "path" and
    "incomplete" (the mark's sentence, or None). Raises StoreError for a file that is not a sound store (as
    _checked checks it; with `model`, (model id, dimension), one that records that model but vectors of another
    dimension too), StorageError for a full disk,
    and whatever `write` raises (a download cut off); then `dest` is left as it was found."""
    dest = Path(dest)
    name = check_gallery_name(name)
    stage = dest / STAGE
    if dest.is_dir() and [p.name for p in dest.iterdir()] == [STAGE]:
        shutil.rmtree(stage)  # what a download killed midway left: never a store of its own
    _check_empty(dest)
    made = _make_folder(dest)
    try:
        folder = gallery_path(stage, name)
        folder.mkdir(parents=True)
        db = folder / _db.DB_NAME
        try:
            with open(db, "wb") as out:
                mark = write(out)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise StorageError(f"the disk holding {dest} is full ({_db.free_space(dest)}): nothing was left there",
                               full=True) from None
        received = _checked(db, f"the file received for gallery {name!r}", model)
        if mark is not None:   # in the staged folder: the copy never stands in DEST without its mark
            mark_incomplete(folder, **mark)
        for child in sorted(stage.iterdir()):   # index, or galleries: one rename
            child.replace(dest / child.name)
        stage.rmdir()
        path = gallery_path(dest, name)
        return {"gallery": name, "path": path, "incomplete": incomplete(path), **received}
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_made(made)
        raise


def _checked(db: Path, what: str, model: tuple[str, int] | None = None) -> dict:
    """What the store database `db` holds (backup's keys), read after SQLite's integrity check and the store's
    own: its record and schema version; schema objects (tables, indexes, triggers, views) none but those
    simsearch makes (a trigger of the file's own ran at every write: one deleted what was written); every vector
    of the recorded dimension (that of `model`, (model id, dimension), where it records that model), every
    item's metadata JSON, an index kind FAISS builds. StoreError naming `what` and the problem when it is not a
    sound store. The -wal and -shm a read-only look leaves beside a database in WAL mode are removed (nothing was
    written to them)."""
    wrong = _header_problem(db)
    if wrong:
        raise StoreError(f"{what} is not a simsearch store: {wrong}")
    try:
        conn = _db.connect(db, read_only=True)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            meta = _db.get_meta(conn) if check == "ok" else {}
            wrong = _content_problem(conn, meta, model) if check == "ok" else None
            items = conn.execute("SELECT count(*) FROM items").fetchone()[0] if check == "ok" and not wrong else 0
        finally:
            conn.close()
    except (sqlite3.DatabaseError, StoreError) as exc:
        raise StoreError(f"{what} is not a simsearch store: {exc}") from None
    finally:
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
    if check != "ok":
        raise StoreError(f"{what} failed SQLite's integrity check: {check}")
    if wrong:
        raise StoreError(f"{what} is not a simsearch store: {wrong}")
    _db.check_schema(meta, db.parent)
    return {"items": items, "last_seq": int(meta.get("last_seq", 0)), "model_id": meta["model_id"],
            "dim": int(meta["dim"]), "bytes": db.stat().st_size}


def _content_problem(conn: sqlite3.Connection, meta: dict[str, str], model: tuple[str, int] | None) -> str | None:
    """What is wrong, in words, with a store's content (its integrity checked): its record, its schema objects,
    its rows; or None."""
    if "model_id" not in meta or "dim" not in meta:
        return "it records no model"
    if not meta["dim"].isdigit() or int(meta["dim"]) <= 0:
        return f"it records the dimension {meta['dim']!r}, not a positive integer"
    have = int(meta["dim"])
    if model is not None and meta["model_id"] == model[0] and have != model[1]:
        return (f"it records vectors of dimension {have} for model {model[0]!r}, whose vectors are of dimension "
                f"{model[1]}")
    for key in ("last_seq", "edits", "changes_pruned"):
        if key in meta and not meta[key].isdigit():
            return f"its record's {key} is {meta[key]!r}, not a number"
    foreign = _foreign_schema(conn)
    if foreign:
        return (f"it holds schema objects simsearch does not make ({', '.join(foreign)}): a store is the tables, "
                "indexes and triggers simsearch makes, as GET /galleries/NAME/backup sends them")
    bad = conn.execute("SELECT id, length(vector) FROM items WHERE typeof(vector) != 'blob' OR length(vector) != ? "
                       "LIMIT 1", (have * 4,)).fetchone()
    if bad:
        n = conn.execute("SELECT count(*) FROM items WHERE typeof(vector) != 'blob' OR length(vector) != ?",
                         (have * 4,)).fetchone()[0]
        return (f"{n} item(s) hold a vector of the wrong size (item {bad[0]!r}: {bad[1]} bytes, not the {have * 4} "
                f"of {have} float32 values)")
    bad = conn.execute("SELECT id FROM items WHERE NOT json_valid(metadata) LIMIT 1").fetchone()
    if bad:
        n = conn.execute("SELECT count(*) FROM items WHERE NOT json_valid(metadata)").fetchone()[0]
        return f"{n} item(s) hold metadata that is not JSON (item {bad[0]!r})"
    from . import _faiss
    from ._errors import InvalidItemError

    try:
        _faiss.validate_spec(meta.get("index", "flat"), have)
    except InvalidItemError as exc:
        return f"its record's {exc}"
    return None


def _foreign_schema(conn: sqlite3.Connection) -> list[str]:
    """The schema objects of the database that simsearch's schema does not make, same name and same SQL, as
    "type 'name'" (a store from before the change log lacks some of them: a writer adds those at open)."""
    known = _known_schema()
    return [f"{kind} {name!r}" for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")
            if (kind, name, _same_sql(sql)) not in known]


def _same_sql(sql: str | None) -> str | None:
    """A schema object's SQL as written by any simsearch: its words, whatever spaces and line breaks lie between
    them (the change log's triggers were written on several lines before 2026-12-06, and SQLite keeps the text
    as it was written)."""
    return None if sql is None else " ".join(sql.split())


@functools.lru_cache(maxsize=1)
def _known_schema() -> frozenset[tuple[str, str, str | None]]:
    """sqlite_master's (type, name, sql) rows of a store as this simsearch makes it (index/_db.py's schema)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _db.init_schema(conn)
        _db.init_changes(conn)
        return frozenset((kind, name, _same_sql(sql))
                         for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"))
    finally:
        conn.close()


def _header_problem(db: Path) -> str | None:
    """What SQLite's file header of `db` shows to be wrong with it, in words (a file that is no database, one cut
    short of the pages its header counts), or None; SQLite's own checks follow."""
    size = db.stat().st_size
    with open(db, "rb") as f:
        head = f.read(100)
    if not head.startswith(b"SQLite format 3\0"):
        return f"it is not a SQLite database ({size} bytes beginning {head[:16]!r})"
    if len(head) < 100:
        return f"it holds {size} bytes, fewer than SQLite's 100-byte header"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    counted = head[24:28] == head[92:96]   # the header's page count is valid only where these agree
    if counted and pages and size < page * pages:
        return (f"it is cut short: {size} bytes of the {page * pages} its header counts ({pages} pages of {page}): "
                "send the whole file")
    if counted and pages and size > page * pages:   # refused, not cut: a file with more than its store is no copy
        return (f"it holds {size - page * pages} bytes past the {page * pages} its header counts ({pages} pages of "
                f"{page}): send the file as GET /galleries/NAME/backup sends it, nothing appended")
    return None


def copy_open_store(conn: sqlite3.Connection, source: Path, dest: Path) -> dict:
    """backup's copy of the store in folder `source` into the new or empty folder `dest`, read through `conn`,
    a connection to its database that the caller holds open (Store.backup: its own, which a closing store waits
    for). Returns and raises as backup does."""
    dest = Path(dest)
    _check_empty(dest)
    made = _make_folder(dest)
    try:
        return _copy(source, dest, shown=dest, needs=backup_needs(source), conn=conn)
    except BaseException:
        _remove_made(made)
        raise


def _copy(source: Path, dest: Path, shown: Path, needs: int, conn: sqlite3.Connection | None = None) -> dict:
    """backup's copy of the store in `source` into the folder `dest` (made when missing), read through `conn` or
    else a connection of its own to the database there; a full disk is a StorageError naming `shown` and the
    `needs` bytes."""
    src_db = source / _db.DB_NAME
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / (_db.DB_NAME + ".part")
    try:
        src = conn if conn is not None else _db.connect(src_db, read_only=True)
        try:
            out = sqlite3.connect(part)
            try:
                src.backup(out)  # one step (pages=-1): one read transaction, one moment of the store
            finally:
                out.close()
        finally:
            if conn is None:
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
        if (source / INCOMPLETE_NAME).exists():   # a copy of a part is one too
            shutil.copyfile(source / INCOMPLETE_NAME, dest / INCOMPLETE_NAME)
    except sqlite3.OperationalError as exc:
        if _db.disk_refusal(exc) != sqlite3.SQLITE_FULL:
            raise
        raise StorageError(f"the disk holding {shown} is full ({_db.free_space(dest)}): the copy needs about "
                           f"{needs / 1e6:.1f} MB; nothing was left there", full=True) from None
    finally:
        # the journal of a failed copy too, and the -wal and -shm the check's read-only connection leaves
        # beside a copy in WAL mode (it cannot remove them; nothing was written to them)
        for suffix in ("", "-journal", "-wal", "-shm"):
            part.with_name(part.name + suffix).unlink(missing_ok=True)
    return {"items": items, "last_seq": int(meta.get("last_seq", 0)), "model_id": meta.get("model_id"),
            "dim": int(meta["dim"]) if "dim" in meta else None, "bytes": (dest / _db.DB_NAME).stat().st_size}


def _check_source(source: Path) -> None:
    if not (source / _db.DB_NAME).is_file():
        raise StoreError(f"no store at {source} (no {_db.DB_NAME} there)")


def _check_empty(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} is not an empty folder; a backup goes into a new or empty one")


def _check_outside(data_dir: Path, dest: Path) -> None:
    """StoreError when `dest` is the data folder or lies in the folders of its galleries' stores, where a copy
    would become a gallery of the live service, or go with one it deletes."""
    target = dest.resolve()
    if target == data_dir.resolve():
        raise StoreError(f"{dest} is the data folder being backed up; a backup goes into a folder of its own")
    for live in live_folders(data_dir):
        live = live.resolve()
        if target == live or live in target.parents:
            raise StoreError(f"{dest} is inside {live}, where the live galleries of {data_dir} are kept; "
                             f"a backup goes elsewhere (outside DATA/index and DATA/galleries)")


def _make_folder(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it made, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_made(made: list[Path]) -> None:
    """Remove the folders _make_folder made, innermost first, where they are empty again."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
