"""StoreReader: the record of truth of a store read directly, without loading its index.

For tools that copy or transform a gallery (re-embedding it with another model) while another
process may be serving the store: a read-only SQLite connection takes no lock, and WAL readers
never block that process's writes. Each call reads the store as it is at that call.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from . import _db, _faiss
from ._checks import check_list
from ._errors import StoreError
from ._incomplete import incomplete
from ._types import Item, item_from_row


class Row(NamedTuple):
    """One item as listed: seq is the number of the write that stored this version of it (a
    replaced item has a new one; an edit of label or metadata keeps it)."""

    seq: int
    label: str | None
    metadata_json: str


_MAX_LISTED = 50  # problems listed by a check (all are counted)


@dataclass
class Check:
    """What StoreReader.check found: `problems` (damage, each naming the item or file; at most 50
    listed), `damaged` (how many problems in all), `notes` (states that are not damage)."""

    items: int = 0
    damaged: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        """Count a problem; list it while fewer than 50 are."""
        self.damaged += 1
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(problem)


class StoreReader:
    """Read a store's items in the folder `path` (the one holding store.sqlite3). StoreError when
    there is no store there. Use as a context manager, or close()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        db = self.path / _db.DB_NAME
        if not db.is_file():
            raise StoreError(f"no store at {self.path} (no {_db.DB_NAME} there)")
        self._conn = _db.connect(db, read_only=True)
        try:
            meta = _db.get_meta(self._conn)
        except sqlite3.Error as exc:   # no tables yet (a store being made this moment), or not a store
            self._conn.close()
            raise StoreError(f"the store at {self.path} has no records to read ({exc}): it is being made, or "
                             f"{_db.DB_NAME} is not a simsearch store") from None
        try:
            _db.check_schema(meta, self.path)
        except StoreError:
            self._conn.close()
            raise
        if "model_id" not in meta:
            self._conn.close()
            raise StoreError(f"the store at {self.path} is empty (no model recorded)")
        self.model_id: str = meta["model_id"]
        self.dim = int(meta["dim"])
        self.index_spec: str = meta.get("index", "flat")

    def count(self) -> int:
        """How many items the store holds (one SQL count; the index is not loaded)."""
        return int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def rows(self) -> tuple[int, dict[str, Row]]:
        """(last_seq, id -> Row) in one read transaction: every write up to last_seq is in the rows,
        none after it. Ordered by seq (the store's listing order)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            last_seq = int(_db.get_meta(conn).get("last_seq", 0))
            rows = {id_: Row(seq, label, meta) for id_, seq, label, meta in
                    conn.execute("SELECT id, seq, label, metadata FROM items ORDER BY seq")}
        finally:
            conn.execute("COMMIT")
        return last_seq, rows

    def items(self, ids: Sequence[str], thumbnails: bool = True) -> list[Item | None]:
        """The items with these ids (vector, label, metadata and, when asked, thumbnail): one entry
        per id, in order, None where absent."""
        found: dict[str, Item] = {}
        unique = list(dict.fromkeys(check_list(ids, "items")))
        for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit is 999 on old builds
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT i.id, i.vector, i.label, i.metadata, {'t.data' if thumbnails else 'NULL'} FROM items i "
                f"{'LEFT JOIN thumbnails t ON t.id = i.id ' if thumbnails else ''}WHERE i.id IN ({marks})",
                chunk).fetchall()
            for *row, thumb in rows:
                item = found[row[0]] = item_from_row(row)
                item.thumbnail = None if thumb is None else bytes(thumb)
        return [found.get(i) for i in ids]

    def thumbnails(self) -> Iterator[tuple[str, bytes]]:
        """(id, the stored bytes) of every thumbnail, whatever state the item's other fields are in."""
        cur = self._conn.execute("SELECT id, data FROM thumbnails")
        while rows := cur.fetchmany(500):
            yield from ((id_, bytes(data)) for id_, data in rows)

    def check(self) -> Check:
        """Look over the whole store for damage, reading only (safe while a service serves it): SQLite's
        quick_check, the record (last_seq not behind any item), every item's vector (its length, finite,
        of unit norm: a flipped bit shows there, as SQLite keeps no checksums of its own), label and
        metadata, the change log's triggers, and the FAISS snapshot's checksum and place; and a copy into it
        (`index copy`, `index reembed`) that did not finish. Each problem names the item or file."""
        conn, out = self._conn, Check()
        unfinished = incomplete(self.path)
        if unfinished:   # sound, but a part of what it was filled from
            out.add(unfinished)
        for (line,) in conn.execute("PRAGMA quick_check"):
            if line != "ok":
                out.add(f"SQLite: {line}")
        conn.execute("BEGIN")  # one moment of the store, whatever a serving process writes meanwhile
        try:
            last_seq = int(_db.get_meta(conn).get("last_seq", 0))
            cur = conn.execute("SELECT id, seq, vector, label, metadata FROM items ORDER BY seq")
            while rows := cur.fetchmany(4096):
                out.items += len(rows)
                self._check_rows(rows, last_seq, out)
        finally:
            conn.execute("COMMIT")
        for trigger in _db.missing_change_triggers(conn):
            out.add(f"the change log lacks its trigger {trigger!r}: replicas of an earlier version would miss "
                    "deletions, replacements or edits (this version's compare the whole listing instead); opening the "
                    "store for writing (the service that writes to it) restores it")
        snap = self.path / _faiss.SNAPSHOT_NAME
        if not snap.exists():
            out.notes.append("no snapshot: the next start builds the index from the database")
        else:
            try:
                head = _faiss.verify_snapshot(snap)
            except _faiss.SnapshotError as exc:
                out.add(f"snapshot {snap}: {exc} (the next start moves it aside and rebuilds from the "
                        "database; nothing is lost)")
            else:
                # read after the snapshot: a serving process may have written and snapshotted since the
                # items were read, and a sound database is never behind a snapshot taken before it is read
                last_seq = int(_db.get_meta(conn).get("last_seq", 0))
                behind = last_seq - int(head["seq"])
                if behind < 0:
                    out.add(f"snapshot {snap} is at write {head['seq']}, beyond the database's {last_seq}: "
                            "the database lost acknowledged writes (restored from an older copy?)")
                elif behind:
                    out.notes.append(f"snapshot at write {head['seq']}, {behind} writes behind the database "
                                     "(replayed at the next start)")
        return out

    def _check_rows(self, rows: list, last_seq: int, out: Check) -> None:
        good = []
        for row in rows:
            vec = row[2]
            if isinstance(vec, bytes) and len(vec) == 4 * self.dim:
                good.append(row)
            else:
                out.add(f"item {row[0]!r}: its vector has {len(vec) if isinstance(vec, bytes) else 0} bytes, "
                        f"not {4 * self.dim} ({self.dim} float32)")
        if good:
            vecs = np.frombuffer(b"".join(r[2] for r in good), dtype=np.float32).reshape(len(good), self.dim)
            finite = np.isfinite(vecs).all(axis=1)
            with np.errstate(invalid="ignore"):
                norms = np.linalg.norm(vecs.astype(np.float64), axis=1)  # float64: a 1e38 component squares
            for i in np.flatnonzero(~finite | (np.abs(norms - 1) > 1e-3)):
                what = "holds NaN or infinity" if not finite[i] else f"has norm {norms[i]:.6g}, not 1"
                out.add(f"item {good[i][0]!r}: its vector {what}")
        for id_, seq, _vec, label, meta in rows:
            if seq > last_seq:
                out.add(f"item {id_!r}: written at {seq}, after the store's last write {last_seq}")
            if label is not None and not isinstance(label, str):
                out.add(f"item {id_!r}: its label is a {type(label).__name__}, not text")
            try:
                if not isinstance(json.loads(meta), dict):
                    raise ValueError("not a JSON object")
            except (TypeError, ValueError) as exc:
                out.add(f"item {id_!r}: its metadata is unreadable ({exc})")

    def close(self) -> None:
        """Release the database connection."""
        self._conn.close()

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
