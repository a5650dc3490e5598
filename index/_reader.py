"""StoreReader: the record of truth of a store read directly, without loading its index.

For tools that copy or transform a gallery (re-embedding it with another model) while another
process may be serving the store: a read-only SQLite connection takes no lock, and WAL readers
never block that process's writes. Each call reads the store as it is at that call.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from . import _db
from ._errors import StoreError
from ._store import _row_to_item
from ._types import Item


class Row(NamedTuple):
    """One item as listed: seq is the number of the write that stored this version of it (a
    replaced item has a new one; an edit of label or metadata keeps it)."""

    seq: int
    label: str | None
    metadata_json: str


class StoreReader:
    """Read a store's items in the folder `path` (the one holding store.sqlite3). StoreError when
    there is no store there. Use as a context manager, or close()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        db = self.path / _db.DB_NAME
        if not db.is_file():
            raise StoreError(f"no store at {self.path} (no {_db.DB_NAME} there)")
        self._conn = _db.connect(db, read_only=True)
        meta = _db.get_meta(self._conn)
        if "model_id" not in meta:
            raise StoreError(f"the store at {self.path} is empty (no model recorded)")
        self.model_id: str = meta["model_id"]
        self.dim = int(meta["dim"])
        self.index_spec: str = meta.get("index", "flat")

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
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit is 999 on old builds
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT i.id, i.vector, i.label, i.metadata, {'t.data' if thumbnails else 'NULL'} FROM items i "
                f"{'LEFT JOIN thumbnails t ON t.id = i.id ' if thumbnails else ''}WHERE i.id IN ({marks})",
                chunk).fetchall()
            for *row, thumb in rows:
                item = found[row[0]] = _row_to_item(row, self.dim)
                item.thumbnail = None if thumb is None else bytes(thumb)
        return [found.get(i) for i in ids]

    def close(self) -> None:
        """Release the database connection."""
        self._conn.close()

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
