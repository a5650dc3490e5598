"""Writing to a Store and following another process's writes: each write committed to SQLite (durable on
return), then applied to the in-memory maps and the FAISS index all at once under the exclusive lock; and
refresh(), which applies to a read-only store what its writer has committed since. Part of Store (see
_store.py)."""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from . import _db, _filter
from ._checks import KEEP, check_list, merge_patch
from ._errors import InvalidItemError, StorageError, StoreError
from ._types import Item, vectors_from_blobs

log = logging.getLogger("index")


class StoreWrites:
    """Store's writes (one at a time, under _writer) and their replication to read-only stores (refresh).
    The fields it uses are Store's, declared in Store.__init__."""

    CHANGES_KEPT = 100_000   # change-log entries kept; a follower further behind compares listings

    def upsert(self, items: Sequence[Item]) -> int:
        """Add or replace items (same id: replaced, including label, metadata and thumbnail).
        Returns the number written. Durable when it returns: the commit is fsynced, so it
        survives kill -9. All items are validated first; an invalid one writes nothing."""
        self._check_writable()
        batch = self._unique(items)
        if not batch:
            return 0
        vecs = self._check_vectors(batch)
        rows = [self._validate(item) for item in batch]
        with self._writer:
            self._check_writable()
            seq0 = self._last_seq
            seq = seq0 + len(batch)
            new = [(seq0 + 1 + j, item.id, vecs[j], label, meta)
                   for j, (item, (label, meta, _t)) in enumerate(zip(batch, rows))]
            with self._transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO items (id, seq, vector, label, metadata) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 ((id_, sq, vecs[j].tobytes(), label, meta)
                                  for j, (sq, id_, _v, label, meta) in enumerate(new)))
                conn.executemany("DELETE FROM thumbnails WHERE id = ?",
                                 ((item.id,) for item, r in zip(batch, rows) if r[2] is None))
                conn.executemany("INSERT OR REPLACE INTO thumbnails VALUES (?, ?)",
                                 ((item.id, r[2]) for item, r in zip(batch, rows) if r[2] is not None))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(seq),))
            self._last_seq = seq
            self._apply(new, [], seq)
        self._after_write(len(new))
        return len(new)

    def update(self, id: str, label: Any = KEEP, metadata_patch: dict[str, Any] | None = None) -> Item:
        """Change an item's label and/or metadata in place, keeping its vector, thumbnail and place in
        the listing; returns the item as it now is. label: the new label (None removes it), kept when
        not given. metadata_patch: a JSON merge patch (RFC 7396) on its metadata: each key given is
        set, a key given as None is removed, objects merge key by key. KeyError when no item has
        the id. Durable on return; searches see the change all at once."""
        self._check_writable()
        id = self._check_update(id, metadata_patch)
        with self._writer:
            self._check_writable()
            row = self._conn.execute("SELECT seq, vector, label, metadata FROM items WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise KeyError(id)
            fid, blob, old_label, old_meta = row
            new_label, meta_json = self._patched(id, old_label, old_meta, label, metadata_patch)
            self._edit_locked([(fid, id, new_label, meta_json)])
        return Item(id, np.frombuffer(blob, dtype=np.float32).copy(), new_label, json.loads(meta_json))

    def update_where(self, label: str | None = None, where: dict[str, Any] | None = None, *,
                     new_label: Any = KEEP, metadata_patch: dict[str, Any] | None = None) -> list[str]:
        """Change the label and/or metadata of every item with this label and matching `where` (as in search;
        one of the two is required), each as `update` changes one: new_label the new label (None removes it),
        kept when not given; metadata_patch a JSON merge patch (RFC 7396) on each item's metadata. Returns the
        ids of the items changed (every one that matched). One write: each item's new label and metadata are
        checked first, and one that would be refused (metadata grown too large, say) refuses the call, naming
        the item, with nothing changed; then all are committed in one transaction and searches see them all at
        once. No write runs between choosing the items and changing them. Durable on return."""
        self._check_writable()
        conditions = _filter.check_where(where)
        self._check_update_where(label is not None or conditions is not None, new_label, metadata_patch)
        with self._writer:
            self._check_writable()
            with self._rw.read():
                chosen = [(fid, self._rows[fid]) for fid in self._filter_fids(label, conditions).tolist()]
            # the applied rows are the committed ones: every write is applied before _writer is let go
            changed = [(fid, id_, *self._patched(id_, old_label, old_meta, new_label, metadata_patch))
                       for fid, (id_, old_label, old_meta) in chosen]
            if changed:
                self._edit_locked(changed)
        return [id_ for _fid, id_, _label, _meta in changed]

    def _patched(self, id_: str, old_label: str | None, old_meta: str, label: Any,
                 metadata_patch: dict[str, Any] | None) -> tuple[str | None, str]:
        """(label, metadata JSON) of the item `id_` once `label` (KEEP: its own) and `metadata_patch` are
        applied to what it has; InvalidItemError naming it when the result would be refused."""
        meta = json.loads(old_meta)
        if metadata_patch is not None:
            meta = merge_patch(meta, metadata_patch)
        new_label, meta_json, _ = self._validate(Item(id_, None, old_label if label is KEEP else label, meta),
                                                 patched=True)
        return new_label, meta_json

    def _edit_locked(self, changed: list[tuple[int, str, str | None, str]]) -> None:
        """Give the rows (FAISS id, id, label, metadata JSON) their new labels and metadata: one transaction, one
        edit in the count followers read (position()), then visible to searches all at once (_writer held)."""
        with self._transaction() as conn:  # the same rows (seq, vector): the FAISS index is untouched
            conn.executemany("UPDATE items SET label = ?, metadata = ? WHERE id = ?",
                             ((label, meta_json, id_) for _fid, id_, label, meta_json in changed))
            counted = conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                                   "WHERE key = 'edits'").rowcount == 1
            self._prune_changes(conn)
        with self._rw.write():
            for fid, _id, label, meta_json in changed:
                self._relabel_locked(fid, label, meta_json)
            self._edits += counted   # as followers will read it: uncounted edits do not move position()
            self._version += 1

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Delete items by id; returns the ids that existed (and are now gone). Durable on return."""
        self._check_writable()
        ids = list(dict.fromkeys(self._check_id(i) for i in check_list(ids, "delete")))
        if not ids:
            return []
        with self._writer:
            gone = self._delete_locked(ids)
        self._after_write(len(gone))
        return gone

    def delete_where(self, label: str | None = None, where: dict[str, Any] | None = None) -> list[str]:
        """Delete every item with this label and matching `where` (as in search; one of the two is
        required); returns the ids deleted. No write runs between choosing the items and deleting
        them. Durable on return."""
        self._check_writable()
        conditions = _filter.check_where(where)
        if label is None and conditions is None:
            raise InvalidItemError("delete_where needs a label or a where filter (it never empties the store)")
        with self._writer:
            with self._rw.read():
                ids = [self._rows[fid][0] for fid in self._filter_fids(label, conditions).tolist()]
            gone = self._delete_locked(ids) if ids else []
        self._after_write(len(gone))
        return gone

    def _delete_locked(self, ids: list[str]) -> list[str]:
        self._check_writable()
        gone: list[str] = []
        with self._transaction() as conn:
            for id_ in ids:
                if conn.execute("DELETE FROM items WHERE id = ?", (id_,)).rowcount:
                    gone.append(id_)
                conn.execute("DELETE FROM thumbnails WHERE id = ?", (id_,))
            seq = self._last_seq + 1 if gone else self._last_seq
            if gone:  # a delete is a write with its own sequence number
                conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(seq),))
                self._prune_changes(conn)
        if gone:
            self._last_seq = seq
            self._apply([], gone, seq)
        return gone

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction: committed (and so durable) when the block ends, rolled back if it raises."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the disk failing under it; the next BEGIN starts clean
                    log.warning("index: rollback failed after %s", exc)
            refused = self._refused_write(exc)
            if refused is not None:
                raise refused from exc
            raise

    def _prune_changes(self, conn: sqlite3.Connection) -> None:
        """Keep the change log to its last CHANGES_KEPT entries (in a write's transaction, now and then)."""
        if not self._has_log:
            return
        top = _db.change_log_top(conn) or 0
        if top - self._changes_pruned > 2 * self.CHANGES_KEPT:
            cut = top - self.CHANGES_KEPT
            conn.execute("DELETE FROM changes WHERE n <= ?", (cut,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('changes_pruned', ?)", (str(cut),))
            self._changes_pruned = cut   # if the write rolls back, the next prune merely comes later

    def _refused_write(self, exc: BaseException) -> StorageError | None:
        """The StorageError to raise for a write the disk refused (full, read-only, I/O error), or None
        for any other failure. SQLite has rolled the write back: nothing of it was made."""
        code = _db.disk_refusal(exc)
        if code is None:
            return None
        full = code == sqlite3.SQLITE_FULL
        what = "is full" if full else f"refused the write ({exc})"
        return StorageError(f"the disk holding the index at {self._path} {what} ({_db.free_space(self._path)}): "
                            "the write was rolled back, nothing changed", full=full)

    def _apply(self, new, deleted_ids: list[str], seq: int) -> None:
        """Make a committed write visible to searches, all at once (exclusive lock)."""
        with self._rw.write():
            try:
                old = [self._fid_of[i] for i in deleted_ids + [n[1] for n in new] if i in self._fid_of]
                self._remove_fids(old)
                for fid in old:
                    self._forget_locked(fid)
                if new:
                    fids = np.array([n[0] for n in new], dtype=np.int64)
                    self._index.add_with_ids(np.stack([n[2] for n in new]), fids)
                    for fid, id_, _vec, label, meta in new:
                        self._remember_locked(fid, id_, label, meta)
                self._applied_seq = seq
                self._version += 1
            except Exception as exc:
                # The write is committed; rebuild the derived index from the record of truth.
                log.error("index: applying write seq %d to FAISS failed (%s); rebuilding", seq, exc)
                self._rebuild_locked(reason="recovery after a failed apply")
                self._applied_seq = seq
                self._version += 1


    # ---- following a writer ---------------------------------------------------------------

    def refresh(self) -> tuple[int, int, int]:
        """For a store opened read_only: apply what another process has written to it since it was
        opened or last refreshed, all at once (searches see the store before or after, never between).
        Returns (added, removed, changed) items (a replaced item counts as removed and added; a changed
        one had its label or metadata edited). Cheap when nothing was written (one PRAGMA)."""
        self._check_open()
        if not self.config.read_only:
            raise StoreError(f"the store at {self._path} is open for writing: it holds every write already")
        with self._writer:
            self._check_open()   # (close() releases the connections under _writer)
            conn = self._follow_connection()
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return 0, 0, 0
            changes = self._changes_since(conn)
            self._data_version, self._edits_seen, self._log_seen = version, changes.edits, changes.log_top
            if not (changes.gone or changes.changed or changes.fresh):   # writes that left nothing to apply
                self._caught_up(changes)                                  # (added, then deleted): no _after_write
                return 0, 0, 0
            self._apply_changes(changes)
        # As the writer does after its writes: train an approximate index that has become big enough,
        # compact one that hides many removed vectors (HNSW), each in the background when large.
        self._after_write(len(changes.fresh) + len(changes.gone))
        return len(changes.fresh), len(changes.gone), len(changes.changed)

    def _follow_connection(self) -> sqlite3.Connection:
        """refresh()'s connection, opened the first time: one, as PRAGMA data_version counts per connection."""
        if self._follow_conn is None:
            conn = _db.connect(self._db_path, read_only=True)
            if self.folder_changed():   # opened by path: the database the writer made in this one's place
                conn.close()
                raise self._dropped_under_us()
            self._follow_conn = conn
            with self._conns_lock:
                self._conns.append(self._follow_conn)
        return self._follow_conn

    def _changes_since(self, conn: sqlite3.Connection) -> _Changes:
        """What the writer committed since the last refresh, read from one state of the database: from the
        change log where it reaches back that far, else by comparing the listing (the writer lock held)."""
        conn.execute("BEGIN")   # the changes and the new rows from one state of the database
        try:
            meta = _db.get_meta(conn)
            last_seq, edits = int(meta.get("last_seq", 0)), meta.get("edits")
            log_top = _db.change_log_top(conn)
            if self._log_reaches(conn, meta, log_top):
                gone, changed = self._logged_changes(conn)
            else:
                gone, changed = self._listed_changes(conn, edits)
            fresh = conn.execute("SELECT seq, id, vector, label, metadata FROM items WHERE seq > ?",
                                 (self._applied_seq,)).fetchall()
        finally:
            conn.execute("COMMIT")
        fresh = [r for r in fresh if r[0] not in self._rows]
        # A replaced item is its id under a new seq: its old row goes (the log lists it too, since the
        # items_replaced_log trigger; a listing compared finds it gone as well).
        gone.update(self._fid_of[r[1]] for r in fresh if r[1] in self._fid_of)
        return _Changes(last_seq, edits, log_top, gone, changed, fresh)

    def _log_reaches(self, conn: sqlite3.Connection, meta: dict[str, str], log_top: int | None) -> bool:
        """Whether the change log holds every deletion, replacement and edit since the last look: it exists,
        was not made anew or pruned past the last entry read, and has all its triggers (a writer of a version
        from before one, or a trigger dropped by hand, writes changes the log misses)."""
        return (log_top is not None and self._log_seen is not None and log_top >= self._log_seen
                and int(meta.get("changes_pruned", 0)) <= self._log_seen
                and not _db.missing_change_triggers(conn))

    def _logged_changes(self, conn: sqlite3.Connection) -> tuple[set[int], dict[int, tuple]]:
        """(gone, changed) from the change log, which holds every deletion, replacement and edit since the last
        look: only those rows are read (a row gone from the table was deleted or replaced; one still there may
        have been edited)."""
        touched = conn.execute(
            "SELECT c.seq, i.id, i.label, i.metadata FROM (SELECT DISTINCT seq FROM changes "
            "WHERE n > ?) AS c LEFT JOIN items AS i ON i.seq = c.seq", (self._log_seen,)).fetchall()
        current = {r[0]: r[1:] for r in touched if r[1] is not None}
        gone = {r[0] for r in touched if r[1] is None and r[0] in self._rows}
        changed = {fid: row for fid, row in current.items() if self._rows.get(fid, row) != row}
        return gone, changed

    def _listed_changes(self, conn: sqlite3.Connection, edits: str | None) -> tuple[set[int], dict[int, tuple]]:
        """(gone, changed) by comparing the listing with the rows applied: for a store without a log (from before
        it), a follower further behind than the log reaches, or a log made anew since the last look (it counts
        from 1 again). Labels and metadata are compared only when the writer has edited some since the last
        look (or does not count its edits)."""
        compare = edits is None or edits != self._edits_seen
        query = "SELECT seq, id, label, metadata FROM items" if compare else "SELECT seq FROM items"
        current = {row[0]: row[1:] for row in conn.execute(query)}
        gone = {fid for fid in self._rows if fid not in current}
        changed = {fid: row for fid, row in current.items() if fid in self._rows and self._rows[fid] != row} \
            if compare else {}
        return gone, changed

    def _apply_changes(self, changes: _Changes) -> None:
        """Make what refresh() read visible to searches, all at once (exclusive lock)."""
        fresh = changes.fresh
        vectors = vectors_from_blobs([r[2] for r in fresh], self.dim) if fresh else None
        with self._rw.write():
            self._remove_fids(changes.gone)
            for fid in changes.gone:
                self._forget_locked(fid)
            for fid, (_id, label, meta_json) in changes.changed.items():
                self._relabel_locked(fid, label, meta_json)
            if fresh:
                self._index.add_with_ids(vectors, np.array([r[0] for r in fresh], dtype=np.int64))
                for fid, id_, _blob, label, meta in fresh:
                    self._remember_locked(fid, id_, label, meta)
            self._caught_up(changes)
            self._version += 1

    def _caught_up(self, changes: _Changes) -> None:
        """Move the store's position to the writer's, as refresh() read it (never back)."""
        self._applied_seq = self._last_seq = max(changes.last_seq, self._applied_seq)
        self._edits = max(int(changes.edits or 0), self._edits)

    # ---- the in-memory maps (rows, ids, labels, metadata indexes) -------------------------

    def _forget_locked(self, fid: int) -> None:
        """Drop the row `fid` from the in-memory maps (the write lock held; FAISS is the caller's)."""
        id_, label, meta = self._rows.pop(fid)
        if self._fid_of.get(id_) == fid:   # not when a newer version of the item is already there
            del self._fid_of[id_]
        self._unlabel_locked(label, fid)
        self._meta.discard(fid, meta)

    def _unlabel_locked(self, label: str | None, fid: int) -> None:
        """Take `fid` out of its label's set, and drop the set once it is empty: a label no item holds any more is
        forgotten, as a metadata value is (_filter.discard), so that a gallery whose labels change (an SKU, an order
        id) does not keep one entry for every label it ever held (the write lock held)."""
        fids = self._by_label[label]
        fids.discard(fid)
        if not fids:
            del self._by_label[label]

    def _remember_locked(self, fid: int, id_: str, label: str | None, meta_json: str) -> None:
        """Add the row `fid` to the in-memory maps (the write lock held; FAISS is the caller's)."""
        self._rows[fid] = (id_, label, meta_json)
        self._fid_of[id_] = fid
        self._by_label.setdefault(label, set()).add(fid)
        self._meta.add(fid, meta_json)

    def _relabel_locked(self, fid: int, label: str | None, meta_json: str) -> None:
        """Give the row `fid` a new label and metadata (the write lock held): its vector stays."""
        id_, old_label, old_meta = self._rows[fid]
        self._unlabel_locked(old_label, fid)
        self._by_label.setdefault(label, set()).add(fid)
        self._meta.discard(fid, old_meta)
        self._rows[fid] = (id_, label, meta_json)
        self._meta.add(fid, meta_json)


class _Changes(NamedTuple):
    """What a follower's refresh() read of its writer's commits since the last one, from one state of the database."""

    last_seq: int                 # the writer's last write
    edits: str | None             # its count of label/metadata edits (None: it does not count them)
    log_top: int | None           # the change log's last entry (None: no log)
    gone: set[int]                # FAISS ids deleted or replaced
    changed: dict[int, tuple]     # FAISS id -> (id, label, metadata json) of a row whose label or metadata changed
    fresh: list[tuple]            # rows written since: (seq, id, vector bytes, label, metadata json)
