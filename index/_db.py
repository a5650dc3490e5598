"""The record of truth: SQLite in WAL mode with synchronous=FULL, so a commit survives kill -9
(and power loss, as far as the disk honours fsync)."""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
from pathlib import Path

from ._errors import StorageError, StoreCorruptError, StoreError

log = logging.getLogger("index")

DB_NAME = "store.sqlite3"  # the record of truth, in a store's folder
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- seq: the sequence number of the write that produced this version of the row; it is also the
-- row's int64 id in the FAISS index, so a replaced row gets a new FAISS id.
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    label TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS items_label_seq ON items(label, seq);
CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, data BLOB NOT NULL);
"""
# The change log that read-only followers apply instead of comparing the whole listing: the seq of
# every row deleted, replaced or edited in place. Triggers write it, so every writer records it, whichever
# version of this code (or the sqlite3 shell) it is. A replaced row needs its own trigger: the delete that
# INSERT OR REPLACE makes fires no DELETE trigger (SQLite's recursive_triggers is off, per connection), so
# a BEFORE INSERT trigger logs the seq of the row the insert is about to replace. Without it a follower
# that held the old row and missed the new one (replaced, then deleted, between two refreshes) kept it.
# Old entries are pruned; `changes_pruned` in meta is the last n gone (see restart_changes).
_CHANGES_TABLE = "CREATE TABLE IF NOT EXISTS changes (n INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL)"
_CHANGE_TRIGGERS = {
    "items_deleted_log": "AFTER DELETE ON items BEGIN INSERT INTO changes (seq) VALUES (OLD.seq); END",
    "items_edited_log": "AFTER UPDATE OF label, metadata ON items "
                        "BEGIN INSERT INTO changes (seq) VALUES (NEW.seq); END",
    "items_replaced_log": "BEFORE INSERT ON items BEGIN INSERT INTO changes (seq) "
                          "SELECT seq FROM items WHERE id = NEW.id; END",
}
CHANGE_TRIGGERS = tuple(_CHANGE_TRIGGERS)


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """Open (creating when allowed) the database; StoreCorruptError when it is not readable,
    StorageError when its disk refuses the journal files (full, failing), StoreError when it cannot be
    opened at all (permissions, a read-only disk it cannot be read on)."""
    try:
        if read_only:
            conn = _connect_read_only(Path(path))
        else:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        # Touch the schema so that "file is not a database" surfaces here, at open.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if _cannot_open(exc):
            raise StoreError(f"cannot open the store's database {path}: {exc}. {_why_not_opened(Path(path))}") from None
        refusal = disk_refusal(exc)
        if refusal is not None:  # not damage: SQLite could not write its journal files beside it
            free = free_space(Path(path).parent)
            full = refusal == sqlite3.SQLITE_FULL or free.startswith("0.0 MB")
            raise StorageError(f"cannot open the store's database {path}: {exc}; the disk holding it "
                               f"{'is full' if full else 'refused a write'} ({free}). Nothing was changed; "
                               "free space (or fix the disk) and start again", full=full) from None
        raise StoreCorruptError(
            f"cannot open the store's database {path}: {exc}. It is the record of truth, so the "
            f"store will not start on it; restore it from a backup or move it away to start empty"
        ) from None
    return conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # as a URI, percent-encoded: a folder named "my photos #2" must not end the path at "#"
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if not (_cannot_open(exc) and on_read_only_disk(path.parent) and not _wal_pending(path)):
            raise
    # A store on a read-only disk (a backup on read-only media, a volume mounted :ro) that no writer
    # has open: SQLite cannot create the WAL's shared-memory file there, so it is read as immutable,
    # which needs none. A writer keeps that file beside the database, so with none there is no writer;
    # and the write-ahead log is empty (checked above), so the database file holds every write.
    return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False, isolation_level=None,
                           timeout=30)


def _cannot_open(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN


def on_read_only_disk(folder: Path) -> bool:
    """Whether `folder` lies on a disk mounted read-only (False where that cannot be told: no statvfs)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):   # AttributeError: no statvfs (Windows)
        return False


def _wal_pending(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and wal.stat().st_size > 0


def _why_not_opened(path: Path) -> str:
    if on_read_only_disk(path.parent) and _wal_pending(path):
        return (f"It is on a read-only disk, and its write-ahead log ({path.name}-wal) holds writes that are "
                f"not yet in the database file, which SQLite cannot read without writing there. Copy the "
                f"folder to a writable disk and open the copy")
    return ("Check that this user may read the file and write to its folder (SQLite keeps its -wal and -shm "
            "files beside it), or that the disk is mounted")


def disk_refusal(exc: BaseException) -> int | None:
    """SQLITE_FULL, SQLITE_IOERR or SQLITE_READONLY when `exc` is SQLite saying the disk refused a write
    (SQLite has rolled it back); None for any other failure."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.OperationalError) else None
    if code is None or code & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY):
        return None
    return code & 0xFF


def free_space(folder: Path) -> str:
    """The free space of the disk holding `folder`, in words for an error message."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"


def init_schema(conn: sqlite3.Connection) -> None:
    try:
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(f"cannot initialise the store's database: {exc}") from None


def init_changes(conn: sqlite3.Connection) -> bool:
    """Add the change log, or what of it is missing, to a store (one from before it); False when the disk
    refuses the write (full): the store works without it, its followers compare listings instead. A log that
    lacked a trigger (one from before the trigger, or one dropped by hand) missed changes: it is restarted
    (restart_changes), so that every follower compares the listing once and so drops what it missed."""
    try:
        conn.execute("BEGIN IMMEDIATE")   # one transaction: a table without its triggers is a log that misses
        had_log = has_changes(conn)
        lacking = missing_change_triggers(conn)
        conn.execute(_CHANGES_TABLE)
        for name, body in _CHANGE_TRIGGERS.items():
            conn.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
        if had_log and lacking:
            restart_changes(conn)
        conn.execute("COMMIT")
        if had_log and lacking:
            log.warning("index: the change log of %s lacked its trigger(s) %s, so it may have missed changes: "
                        "added; read-only followers compare the whole listing once", _conn_path(conn),
                        ", ".join(lacking))
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if disk_refusal(exc) is None:
            raise
        return False
    return True


def restart_changes(conn: sqlite3.Connection) -> None:
    """Mark every entry of the change log so far as pruned, and one entry more (seq 0, which is no row's), in
    the caller's write transaction: every follower, however far it had read, then compares the whole listing
    once (its refresh finds `changes_pruned` beyond the last entry it read) and follows the log from there."""
    n = conn.execute("INSERT INTO changes (seq) VALUES (0)").lastrowid
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('changes_pruned', ?)", (str(n),))


def _conn_path(conn: sqlite3.Connection) -> str:
    """The file of the connection's main database (for a log line)."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "?"


def missing_change_triggers(conn: sqlite3.Connection) -> list[str]:
    """The change log's triggers a store lacks while it has the log (dropped by hand, or from before the trigger
    was added; a writer of this version adds them at open): without them its followers would miss deletions,
    replacements or edits."""
    if not has_changes(conn):
        return []
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return [t for t in CHANGE_TRIGGERS if t not in have]


def change_log_top(conn: sqlite3.Connection) -> int | None:
    """The last entry of the store's change log (0 when empty), or None when the store has no log."""
    if not has_changes(conn):
        return None
    return conn.execute("SELECT coalesce(max(n), 0) FROM changes").fetchone()[0]


def has_changes(conn: sqlite3.Connection) -> bool:
    """Whether the store keeps the change log (its writer has opened it since the log was added)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes'").fetchone() is not None


def get_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def check_schema(meta: dict[str, str], path: Path) -> None:
    """StoreError when the store at `path` was written by a newer simsearch, whose schema this one does not
    know: serving it (and marking it back down to this schema at the next write) could lose what it added."""
    have = meta.get("schema", "1")
    if not have.isdigit():
        raise StoreCorruptError(f"the store at {path} records schema {have!r}, not a number")
    if int(have) > SCHEMA_VERSION:
        raise StoreError(f"the store at {path} was written by a newer simsearch (store schema {have}; this one "
                         f"reads schema {SCHEMA_VERSION} and older): serve it with that version, or a backup made "
                         "before the upgrade with this one")


def check_wal(db_path: Path) -> None:
    """Look at the WAL (the journal) before SQLite replays it and log clearly what will not be
    recovered: frames after the last committed transaction, or a torn / corrupt tail. SQLite
    itself recovers every intact committed transaction; this makes the discarded part visible."""
    wal = db_path.with_name(db_path.name + "-wal")
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return
    if len(data) == 0:
        return
    if len(data) < 32:
        log.error("index: journal %s is truncated to %d bytes (no valid header); SQLite will ignore "
                  "it and recover from the database file alone", wal, len(data))
        return
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    if magic not in (0x377F0682, 0x377F0683):
        log.error("index: journal %s has a corrupt header; SQLite will ignore it", wal)
        return
    big = magic & 1
    fmt = ">" if big else "<"

    def cksum(buf: bytes, s1: int, s2: int) -> tuple[int, int]:
        words = struct.unpack(f"{fmt}{len(buf) // 4}I", buf)
        for i in range(0, len(words), 2):
            s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
            s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
        return s1, s2

    s1, s2 = cksum(data[:24], 0, 0)
    if (s1, s2) != (c1, c2):
        log.error("index: journal %s header checksum mismatch; SQLite will ignore the journal", wal)
        return
    frame = 24 + page_size
    off, frames, last_commit_frames = 32, 0, 0
    while off + frame <= len(data):
        hdr = data[off:off + 24]
        _pgno, commit, fs1, fs2, fc1, fc2 = struct.unpack(">6I", hdr)
        if (fs1, fs2) != (salt1, salt2):
            break  # frames of an earlier WAL generation: normal after a checkpoint
        s1, s2 = cksum(hdr[:8], s1, s2)
        s1, s2 = cksum(data[off + 24:off + frame], s1, s2)
        if (s1, s2) != (fc1, fc2):
            log.error("index: journal %s: frame %d fails its checksum (corrupt); the %d committed "
                      "frames before it are recovered, everything from it on is discarded",
                      wal, frames, last_commit_frames)
            return
        frames += 1
        off += frame
        if commit:
            last_commit_frames = frames
    uncommitted = frames - last_commit_frames
    tail = len(data) - off
    partial = 0 < tail < frame and (tail < 16 or struct.unpack(">2I", data[off + 8:off + 16]) == (salt1, salt2))
    if partial:
        log.warning("index: journal %s ends with a partial frame (%d bytes) after %d frames of an "
                    "unfinished transaction: a write interrupted mid-way (never acknowledged) or a "
                    "truncated journal (then the transactions cut off are lost). Recovering the %d "
                    "frames up to the last complete commit; the rest is discarded",
                    wal, tail, uncommitted, last_commit_frames)
    elif uncommitted:
        log.warning("index: journal %s: %d frames after the last commit are discarded (a write "
                    "interrupted before its commit, so never acknowledged, or a journal cut at a "
                    "frame boundary); the %d committed frames are recovered",
                    wal, uncommitted, last_commit_frames)
