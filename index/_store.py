"""Store: string ids, vectors, labels, metadata and thumbnails; SQLite is the record of truth,
the FAISS index is derived from it and snapshotted. See docs/index.md."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Sequence

import faiss
import numpy as np

from . import _db, _faiss, _filter
from ._errors import InvalidItemError, StoreClosedError, StoreError
from ._checks import ItemChecks, parse_position
from ._rwlock import RWLock
from ._facets import Facet, facet
from ._store_open import StoreOpening
from ._store_search import StoreSearch
from ._store_writes import StoreWrites
from ._groups import _field_key
from ._types import Item, StoreConfig, parse_metadata

log = logging.getLogger("index")

SNAPSHOT_NAME = "index.snapshot"
COMPACT_MIN = 256          # removed-but-present vectors (HNSW, refine) tolerated before a rebuild
SYNC_REBUILD_MAX = 100_000  # up to this size a due rebuild runs in the write call, else in background
CHANGES_KEPT = 100_000     # change-log entries kept; a follower further behind compares listings
SEARCH_RETRY_SECONDS = 10   # how long a search waits for a committed write to be applied


class Store(StoreOpening, StoreWrites, StoreSearch, ItemChecks):
    """A durable gallery of vectors with string ids. Open with Store.open(config).

    Thread-safe: searches run concurrently with each other and with writes; a write becomes
    visible to searches all at once (under an exclusive lock) after it is committed."""

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, config: StoreConfig) -> "Store":
        """Create or recover the store at config.path. Raises ModelMismatchError when the store
        holds another model or dimension, StoreCorruptError when its database is unreadable,
        StoreLockedError when another process has it open for writing."""
        return cls(config)

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._path = config.path
        self._db_path = self._path / _db.DB_NAME
        self._snap_path = self._path / SNAPSHOT_NAME
        self._closed = False
        self._lock_fd: int | None = None
        self._rw = RWLock()
        self._writer = threading.Lock()      # one write (commit + apply) at a time
        self._local = threading.local()
        # Each thread's read connection closes when the thread ends (its finalizer, below) or when the store
        # closes: the threads that read come and go (anyio's pool lets idle ones exit), and a list holding
        # their connections kept every one open, files and page cache, for as long as the service ran.
        self._thread_conns: list[weakref.finalize] = []
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._maint_thread: threading.Thread | None = None
        self._rebuild_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._gpu = None
        self._version = 0                    # bumped on every applied write (caches, GPU mirror)
        self._follow_conn: sqlite3.Connection | None = None   # refresh()'s, and its last data_version
        self._data_version: int | None = None
        self._edits_seen: str | None = None                     # the writer's edit count at the last refresh
        self._edits = 0                        # label/metadata edits in the state searches see (position())
        self._edits_counted = False            # the store counts them (meta 'edits'; a writer's view)
        self._log_seen: int | None = None      # the last change-log entry applied (None: compare listings)
        self._has_log = False                  # the store keeps the change log (a writer's view)
        self._changes_pruned = 0
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # ---- connections -------------------------------------------------------------------------

    def _read_conn(self) -> sqlite3.Connection:
        """A per-thread connection for reads (WAL readers never block the writer)."""
        self._check_open()
        holder = getattr(self._local, "holder", None)
        if holder is None:
            try:
                conn = _db.connect(self._db_path, read_only=True) if self.config.read_only else \
                    sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None, timeout=30)
            except StoreError:
                if self.config.read_only and self.folder_changed():   # the writer dropped it under us
                    raise StoreClosedError(f"the store at {self._path} was deleted or made anew by the process "
                                           "that writes it") from None
                raise
            holder = self._local.holder = _ConnHolder(conn)
            done = weakref.finalize(holder, conn.close)   # the thread's locals go when the thread ends
            with self._conns_lock:
                self._thread_conns = [f for f in self._thread_conns if f.alive]
                self._thread_conns.append(done)
                closing = self._closed
            if closing:   # close() ran since the check above, and did not see this connection
                done()
                self._check_open()
        return holder.conn

    def _describe(self) -> str:
        return f"the store at {self._path}"

    # ---- writes ------------------------------------------------------------------------------

    def _prune_changes(self, conn: sqlite3.Connection) -> None:
        """Keep the change log to its last CHANGES_KEPT entries (in a write's transaction, now and then)."""
        if not self._has_log:
            return
        top = _db.change_log_top(conn) or 0
        if top - self._changes_pruned > 2 * CHANGES_KEPT:
            cut = top - CHANGES_KEPT
            conn.execute("DELETE FROM changes WHERE n <= ?", (cut,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('changes_pruned', ?)", (str(cut),))
            self._changes_pruned = cut   # if the write rolls back, the next prune merely comes later

    def _maintenance_due(self) -> str | None:
        n = len(self._rows)
        if self._needs_training and _faiss.is_exact(self._index) and n >= self._train_threshold():
            return f"gallery reached the training threshold {self._train_threshold()}"
        if len(self._dead) > max(COMPACT_MIN, n // 10):
            # Removed vectors still in an HNSW / refine graph crowd out live neighbours.
            return f"{len(self._dead)} removed vectors to compact"
        return None

    def _after_write(self, n: int) -> None:
        reason = self._maintenance_due()
        every = self.config.snapshot_every
        snap_due = every and not self.config.read_only and self._applied_seq - self._snapshot_seq >= every
        if reason and len(self._rows) <= SYNC_REBUILD_MAX:
            self.rebuild(reason)  # seconds at this size; searches carry on meanwhile
            reason = None
        if reason or snap_due:
            t = self._maint_thread
            if t is None or not t.is_alive():
                self._maint_thread = threading.Thread(target=self._background, args=(reason, snap_due),
                                                      name="index-maintenance", daemon=True)
                self._maint_thread.start()

    def _background(self, reason: str | None, snap: bool) -> None:
        try:
            if reason:
                self.rebuild(reason)
            if snap:
                self.snapshot()
        except StoreClosedError:
            pass
        except OSError as exc:  # a full or failing disk: one line, not a traceback after every write
            log.error("index: snapshot not written (%s); the database holds every write, and the next "
                      "snapshot tries again", exc)
        except Exception:  # nothing is lost (the database has every write): log and go on
            log.exception("index: background maintenance failed")

    # ---- reads -------------------------------------------------------------------------------

    def get(self, id: str) -> Item | None:
        """The item with this id (vector, label, metadata; thumbnail not loaded), or None."""
        row = self._read_conn().execute("SELECT id, vector, label, metadata FROM items WHERE id = ?",
                                        (id,)).fetchone()
        return None if row is None else _row_to_item(row, self.dim)

    def get_many(self, ids: Sequence[str]) -> list[Item | None]:
        """get() for many ids in few queries (e.g. re-ranking candidates): one entry per id, in
        order, None where absent."""
        found: dict[str, Item] = {}
        conn = self._read_conn()
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit is 999 on old builds
            chunk = unique[i:i + 500]
            rows = conn.execute("SELECT id, vector, label, metadata FROM items WHERE id IN "
                                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            found.update((row[0], _row_to_item(row, self.dim)) for row in rows)
        return [found.get(i) for i in ids]

    def thumbnail(self, id: str) -> bytes | None:
        """The stored thumbnail bytes of an item, or None."""
        row = self._read_conn().execute("SELECT data FROM thumbnails WHERE id = ?", (id,)).fetchone()
        return None if row is None else bytes(row[0])

    def __contains__(self, id: str) -> bool:
        with self._rw.read():
            return id in self._fid_of

    def has_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` present in the store (fast: in memory)."""
        with self._rw.read():
            return {i for i in ids if i in self._fid_of}

    def count(self, label: str | None = None, where: dict[str, Any] | None = None) -> int:
        """Number of items (with this label, and matching this metadata filter, when given)."""
        where = _filter.check_where(where)
        self._check_open()
        with self._rw.read():
            if where is not None:
                return len(self._filter_fids(label, where))
            return len(self._rows) if label is None else len(self._by_label.get(label, ()))

    def index_metadata(self, keys: Iterable[str]) -> dict[str, int]:
        """Build the filter indexes of these metadata keys now, as the first `where` on each would
        (reading every item's metadata: about 2 s a million items, once for all the keys), and keep
        them current from then on, also for a key no item has yet. Returns each key's number of
        distinct values. For a service: at start-up, so that no search waits for it."""
        keys = list(dict.fromkeys(keys))
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise InvalidItemError(f"metadata keys must be non-empty strings, got {bad[0]!r:.40}")
        self._check_open()
        with self._rw.read():
            todo = [k for k in keys if k not in self._meta.by_key]
            if todo:
                self._meta.build(todo, keep=True)
            return {k: len(self._meta.by_key[k]) for k in keys}

    def labels(self) -> dict[str | None, int]:
        """Histogram of labels: label -> number of items (None for unlabelled)."""
        with self._rw.read():
            return {k: len(v) for k, v in sorted(self._by_label.items(), key=lambda kv: str(kv[0])) if v}

    def facets(self, field: str, label: str | None = None, where: dict[str, Any] | None = None) -> Facet:
        """How the items with this label and matching `where` spread over the values of `field` ("label" or
        "metadata.KEY"): index.Facet, the most common value first. From the label and key indexes (a key's
        index is built the first time, as a filter on it builds it). ValueError for a field that is neither."""
        self._check_open()
        key = _field_key(field, "field")
        conditions = _filter.check_where(where)
        with self._rw.read():
            filtered = label is not None or conditions is not None
            allowed = set(self._filter_fids(label, conditions).tolist()) if filtered else None
            if key is None:
                index: dict[Any, Any] = {lb: fids for lb, fids in self._by_label.items() if lb is not None}
            else:
                index = self._meta.index(key)
            counts = {}
            for value_key, fids in index.items():
                if isinstance(fids, int):   # a value one item holds is kept as its bare id
                    counts[value_key] = int(allowed is None or fids in allowed)
                else:
                    counts[value_key] = len(fids) if allowed is None else len(allowed.intersection(fids))
            items = len(allowed) if allowed is not None else len(self._rows)
        return facet(field, items, counts)

    def list(self, offset: int = 0, limit: int = 100, label: str | None = None,
             where: dict[str, Any] | None = None, after: int | None = None) -> list[Item]:
        """Items in insertion order (an upsert moves an item to the end), paginated; label and where
        filter as in search. after: only the items listed after this listing position (keyset paging,
        see list_positions); offset then counts from there."""
        return [item for _, item in self.list_positions(offset, limit, label, where, after)]

    def list_positions(self, offset: int = 0, limit: int = 100, label: str | None = None,
                       where: dict[str, Any] | None = None, after: int | None = None) -> list[tuple[int, Item]]:
        """list(), each item with its listing position (an integer that grows in insertion order; a
        replaced item gets a new, larger one). The last item's position, given back as `after`, is the
        next page: unlike an offset, a delete before it moves no item across it."""
        self._check_page(offset, limit)
        after = self._check_after(after)
        if after is None:   # from the first item: every seq is at least 1
            after = -1
        conn = self._read_conn()
        if where is not None:
            where = _filter.check_where(where)
            with self._rw.read():  # the page's FAISS ids (= seq, in insertion order) from the indexes
                fids = self._filter_fids(label, where)
                start = int(np.searchsorted(fids, after, side="right")) + offset
                seqs = fids[start:start + limit].tolist()
            rows = conn.execute(f"SELECT seq, id, vector, label, metadata FROM items WHERE seq IN "
                                f"({','.join('?' * len(seqs))}) ORDER BY seq", seqs).fetchall() if seqs else []
        elif label is None:
            rows = conn.execute("SELECT seq, id, vector, label, metadata FROM items WHERE seq > ? ORDER BY seq "
                                "LIMIT ? OFFSET ?", (after, limit, offset)).fetchall()
        else:
            rows = conn.execute("SELECT seq, id, vector, label, metadata FROM items WHERE label = ? AND seq > ? "
                                "ORDER BY seq LIMIT ? OFFSET ?", (label, after, limit, offset)).fetchall()
        return [(r[0], _row_to_item(r[1:], self.dim)) for r in rows]

    # ---- search ------------------------------------------------------------------------------

    def _retrying(self, locked: Callable[[], Any]) -> Any:
        """locked() under the read lock, again while it returns None (its exact fallback met a write
        committed but not yet applied)."""
        attempt, deadline = 0, time.monotonic() + SEARCH_RETRY_SECONDS
        while True:
            with self._rw.read():
                result = locked()
            if result is not None:
                return result
            attempt += 1  # the exact fallback met a write committed but not yet applied: retry
            if time.monotonic() > deadline:  # not a write in flight: the in-memory state is wrong
                raise StoreError(f"the exact search of {self._path} found the database and the in-memory "
                                 f"index disagreeing for {SEARCH_RETRY_SECONDS} s (a bug: please report it); "
                                 "reopening the store (restarting the service) rebuilds that state")
            time.sleep(min(0.001 * attempt, 0.05))

    def _filter_fids(self, label: str | None, where: tuple | None) -> np.ndarray:
        """FAISS ids of the items with this label (any label when None) whose metadata matches
        `where` (see _filter), from the label and metadata indexes; cached until the next write."""
        return self._meta.filter_fids(label, where, self._version)

    # ---- maintenance -------------------------------------------------------------------------

    def rebuild(self, reason: str = "asked") -> None:
        """Re-train (approximate kinds) and rebuild the index from every stored vector, off to
        the side: searches use the old index and writes go on until the new one, brought up to
        date with the writes made meanwhile, is swapped in. A read-only store rebuilds too, when its
        refreshes make it due: it reads the database and writes nothing."""
        self._check_open()
        with self._rebuild_lock:
            t0 = time.perf_counter()
            with self._writer:
                fids = np.fromiter(self._rows.keys(), dtype=np.int64, count=len(self._rows))
            n = len(fids)
            train = None
            if self._needs_training and n >= self._train_threshold():
                train = self._training_sample(fids)
            index, factory = _faiss.build(self.spec, self.dim, train)
            self._add_fids(fids, index)  # rows replaced or deleted meanwhile are simply absent
            with self._writer:
                dead: set[int] = set()
                self._reconcile(index, dead)
                with self._rw.write():
                    self._index, self._factory, self._dead = index, factory, dead
                    self._trained_n = 0 if train is None else n
                    self._version += 1
            log.info("index: rebuilt %s from %d items in %.1fs (%s)", _faiss.describe(index), n,
                     time.perf_counter() - t0, reason)

    def _reconcile(self, index: faiss.Index, dead: set[int]) -> tuple[int, int]:
        """Bring `index` to the applied state: remove ids no longer live, add live rows it lacks.
        Caller holds the writer lock (no write can be half-way)."""
        live = np.fromiter(self._rows.keys(), dtype=np.int64, count=len(self._rows))
        have = _faiss.ids_of(index)
        stale = have[~np.isin(have, live)]
        missing = live[~np.isin(live, have)]
        self._remove_fids(stale, index, dead)
        self._add_fids(missing, index)
        return len(stale), len(missing)

    def snapshot(self) -> int:
        """Write the index atomically with the last sequence number it contains; returns it.
        Rebuilds first when an approximate index was trained on a gallery 4x smaller than now."""
        self._check_writable()
        with self._snapshot_lock:
            if (self._trained_n and len(self._rows) >= 4 * self._trained_n):
                self.rebuild(f"gallery grew from {self._trained_n} to {len(self._rows)} since training")
            with self._rw.read():
                seq = self._applied_seq
                if seq == self._snapshot_seq and self._snap_path.exists():
                    return seq
                payload = _faiss.serialize(self._index)
                meta = {"seq": seq, "model_id": self.model_id, "dim": self.dim, "spec": self.spec,
                        "factory": self._factory, "trained_n": self._trained_n,
                        "ntotal": int(self._index.ntotal), "written": time.time()}
            _faiss.write_snapshot(self._snap_path, payload, meta)
            self._snapshot_seq = seq
            log.info("index: snapshot at seq %d (%d vectors, %.1f MB)", seq, meta["ntotal"],
                     len(payload) / 1e6)
            return seq

    def position(self) -> str:
        """Where the state searches see stands in the writer's history, as a token ("1042.7": the
        last write's sequence number, then the count of label/metadata edits). It only moves forward.
        A writer's token taken after a write names a state that holds that write: a read-only replica
        `reaches` it once it has applied the write (`refresh`)."""
        self._check_open()
        return f"{self._applied_seq}.{self._edits}"

    def folder_changed(self) -> bool:
        """True when the store's folder no longer holds the database this store opened: deleted, or made
        anew by another process (a read-only follower of a gallery that was dropped, then made again)."""
        try:
            st = os.stat(self._db_path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._db_file

    def reaches(self, position: str) -> bool:
        """True when the state searches see is at least as new as `position` (a `position()` token,
        of this store's writer or of a replica of it). InvalidItemError when it is not such a token."""
        seq, edits = parse_position(position)
        return seq <= self._applied_seq and edits <= self._edits

    def info(self) -> dict[str, Any]:
        """count, dim, model_id, index (the asked kind), index_kind (what FAISS runs now), path,
        last_seq, snapshot_seq, trained (approximate kinds), removed_pending, gpu."""
        self._check_open()
        with self._rw.read():
            exact = _faiss.is_exact(self._index)
            return {
                "count": len(self._rows), "dim": self.dim, "model_id": self.model_id,
                "index": self.spec, "index_kind": _faiss.describe(self._index),
                "factory": self._factory, "exact": exact,
                "trained_on": self._trained_n or None,
                "train_threshold": self._train_threshold()
                if self._needs_training else None,
                "path": str(self._path), "last_seq": self._applied_seq,
                "snapshot_seq": self._snapshot_seq, "removed_pending": len(self._dead),
                "gpu": self._gpu is not None, "labels": len([v for v in self._by_label.values() if v]),
            }

    def close(self) -> None:
        """Snapshot (when writable and anything changed) and release files and the lock."""
        if self._closed:
            return
        t = self._maint_thread
        if t is not None:
            t.join()
        try:
            if not self.config.read_only and self._applied_seq != self._snapshot_seq:
                self.snapshot()
        except OSError as exc:  # a full disk: the database holds every write, the next open replays them
            log.error("index: no snapshot written at close (%s); the next open replays the writes since "
                      "the last one from the database", exc)
        finally:
            self._closed = True
            self._release()

    def _release(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
            thread_conns, self._thread_conns = self._thread_conns, []
        for c in conns:
            c.close()
        for done in thread_conns:
            done()   # closes a connection whose thread is still alive; nothing for one closed already
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        if self._lock_fd is not None:
            self._lock_done()   # closes the descriptor (once: a finalizer runs at most once)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r}, {self.spec}, {len(self._rows)} items)"


class _ConnHolder:
    """A thread's read connection, in an object a finalizer can watch (a sqlite3 connection takes no weak
    reference)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _row_to_item(row, dim: int) -> Item:
    id_, blob, label, meta = row
    return Item(id=id_, vector=np.frombuffer(blob, dtype=np.float32).copy(), label=label,
                metadata=parse_metadata(meta))

