"""Store: string ids, vectors, labels, metadata and thumbnails; SQLite is the record of truth,
the FAISS index is derived from it and snapshotted. See docs/index.md."""
# Store is one class assembled from parts, one file each, because the parts share its locks (_rw: searches
# read, a write's apply writes; _writer: one write at a time; _rebuild_lock, _snapshot_lock) and its in-memory
# state (_rows, _fid_of, _by_label, _index, _dead, _applied_seq, _version) too closely to pass them around:
#   _store.py          the class: its state (__init__), read connections, reads (get, list, count, facets...),
#                      the filter ids, closing
#   _store_open.py     StoreOpening: the folder's lock, the meta table, the index recovered from its snapshot
#                      or built, and the vectors read from SQLite into an index
#   _store_writes.py   StoreWrites: upsert, update(_where), delete(_where), their transaction and apply, the change log
#                      kept to CHANGES_KEPT entries; refresh
#   _store_search.py   StoreSearch: search, search_grouped, search_by_id (FAISS, exact fallback, ties), retried
#                      for up to SEARCH_RETRY_SECONDS while a committed write is being applied
#   _store_maintain.py StoreMaintenance: rebuild, snapshot, the background thread; position, reaches, info
# The metadata indexes behind filters own their state: a MetaIndexes (_meta_indexes.py) that Store calls
# under the locks it holds. Every field of the store, whichever part uses it, is declared in Store.__init__.
from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Sequence

import faiss
import numpy as np

from . import _db, _faiss, _filter
from ._backup import copy_open_store
from ._errors import InvalidItemError, StorageError, StoreClosedError, StoreError
from ._checks import ItemChecks, check_list
from ._rwlock import RWLock
from ._facets import Facet, facet
from ._store_maintain import StoreMaintenance
from ._store_open import StoreOpening
from ._store_search import StoreSearch
from ._store_writes import StoreWrites
from ._groups import _field_key
from ._meta_indexes import MetaIndexes
from ._types import Item, StoreConfig, item_from_row

log = logging.getLogger("index")

# seconds a replica's failed copy waits for the database to go, where its writer's drop has removed the -wal and
# -shm files but not yet the database (Store.backup)
_GONE_WITHIN = 0.5


# Read connections a store keeps idle between reads (_reading); one more that a read ends with is closed. Each
# open connection holds files (the database's descriptor, its -wal; the -shm map is shared) and its own page
# cache. A service keeps every gallery it opened open and reads in a pool of up to 40 threads: connections kept
# per thread (or every one ever opened) grew as galleries x threads, past the open-file limit (reads of open
# galleries failed "unable to open database file"). Two serve a gallery read by one or two threads at a time
# without reopening; a burst of concurrent reads opens what it needs (never waits) and closes all but two after.
# (SQLite keeps the database descriptor of a connection closed while another of the process holds a lock on
# the file, and hands it to the next connection it opens: a writable store's database descriptors stay at the
# most reads it has had at once, until it closes; the -wal descriptors and page caches go.)
_IDLE_READ_CONNS = 2


class Store(StoreOpening, StoreWrites, StoreSearch, StoreMaintenance, ItemChecks):
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
        # Every field of a Store, whichever part reads or sets it. Those declared without a value are set by
        # _open (from the database and the snapshot); the rest start as they are here, and _open fills them in.
        self.config = config
        self._path = config.path
        self._db_path = self._path / _db.DB_NAME
        self._snap_path = self._path / _faiss.SNAPSHOT_NAME
        self._closed = False
        self.model_id: str                     # what the store holds, as its meta table records it
        self.dim: int
        self.spec: str                         # the index kind asked for ("flat", "hnsw", ..., a factory string)
        self._needs_training: bool             # that kind is trained (IVF, PQ) once the gallery is big enough

        # locks
        self._lock_fd: int | None = None       # the folder's LOCK file, held while open for writing
        self._lock_done: weakref.finalize      # closes _lock_fd, once (set with it)
        self._rw = RWLock()                    # searches read; applying a write, or swapping an index, writes
        self._writer = threading.Lock()        # one write (commit + apply) at a time
        self._rebuild_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()

        # connections
        self._conn: sqlite3.Connection         # the writes' (a read-only store's: opening's only)
        self._db_file: tuple[int, int]         # the database file's (device, inode) when opened: folder_changed()
        self._conns: list[sqlite3.Connection] = []   # others closed with the store (refresh()'s)
        self._conns_lock = threading.Lock()
        # Reads of the database (_reading), each on a connection of its own for the block, taken from _idle (the
        # last returned first) or opened anew, and given back at its end, where _idle keeps up to
        # _IDLE_READ_CONNS. close() waits for the reads under way before it closes any connection: a connection
        # closed under a statement another thread was stepping crashed the process. All three under _readers_cond.
        self._idle: list[sqlite3.Connection] = []
        self._readers = 0
        self._readers_cond = threading.Condition()
        self._closing = False

        # The applied state searches see (changed under _rw's write lock). A FAISS id is its row's seq.
        self._rows: dict[int, tuple[str, str | None, str]] = {}   # FAISS id -> (id, label, metadata json)
        self._fid_of: dict[str, int] = {}                          # item id -> FAISS id
        self._by_label: dict[str | None, set[int]] = {}            # label -> FAISS ids
        self._meta = MetaIndexes(self._rows, self._by_label)       # the metadata indexes behind filters
        self._index: faiss.Index                 # from the snapshot or built; a rebuild swaps in another
        self._factory: str                       # the FAISS factory string _index was made from
        self._dead: set[int] = set()             # FAISS ids still in an index that cannot remove
        self._trained_n = 0                      # the gallery size the index was trained on (0: untrained)
        self._gpu: _faiss.GpuMirror | None = None
        self._version = 0                        # bumped on every applied write (caches, GPU mirror)

        # where the store stands in its writes
        self._last_seq = 0                     # the last committed write's sequence number (meta 'last_seq')
        self._applied_seq = 0                  # the last write searches see
        self._snapshot_seq = 0                 # the last write the snapshot on disk holds
        self._edits = 0                        # label/metadata edits in the state searches see (position())
        self._has_log = False                  # the store keeps the change log (a writer's view)
        self._changes_pruned = 0               # the change log's entries up to this one are pruned
        self._maint_thread: threading.Thread | None = None   # the background rebuild or snapshot

        # following a writer (a read-only store's refresh())
        self._follow_conn: sqlite3.Connection | None = None   # refresh()'s, and its last data_version
        self._data_version: int | None = None
        self._edits_seen: str | None = None    # the writer's edit count at the last refresh
        self._log_seen: int | None = None      # the last change-log entry applied (None: compare listings)

        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # ---- connections -------------------------------------------------------------------------

    def _read_conn(self) -> sqlite3.Connection:
        """A new connection for reads (WAL readers never block the writer); _reading hands them out."""
        try:
            conn = _db.connect(self._db_path, read_only=True) if self.config.read_only else \
                sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None, timeout=30)
        except StoreError:
            if self.config.read_only and self.folder_changed():   # the writer dropped it under us
                raise self._dropped_under_us() from None
            raise
        return conn

    @contextlib.contextmanager
    def _reading(self):
        """A read connection for the block, this thread's alone until it ends (every statement of the block on
        the same one), which close() does not close until then; StoreClosedError once the store is closing."""
        with self._readers_cond:
            if self._closing:
                raise StoreClosedError(f"{self._describe()} is closed")
            self._readers += 1
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._read_conn()
            # A read-only store follows a database another process writes, which it may drop or replace (and make
            # anew) at any moment: a connection opened by path then is to that other database (another gallery's
            # rows under this store's ids and seqs, or one with no tables yet). Checked once the connection is
            # taken: the database this store opened is held open by it, so its (device, inode) names no other
            # file meanwhile; and at every read, so that none answers from a database its writer has dropped.
            if self.config.read_only and self.folder_changed():
                conn, taken = None, conn
                taken.close()   # (this thread's alone: no statement of another runs on it)
                raise self._dropped_under_us()
            yield conn
        finally:
            self._end_read(conn)

    def _end_read(self, conn: sqlite3.Connection | None) -> None:
        """A read's end: its connection kept idle (up to _IDLE_READ_CONNS, and only on an open store) or closed,
        then the read uncounted, so that close() returns with every connection closed. One left in a transaction
        (a block that ended with BEGIN unanswered) is closed: kept, it would pin its snapshot of the WAL."""
        try:
            if conn is not None:
                with self._readers_cond:
                    keep = not self._closing and len(self._idle) < _IDLE_READ_CONNS and not conn.in_transaction
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()
        finally:
            with self._readers_cond:
                self._readers -= 1
                if not self._readers:
                    self._readers_cond.notify_all()

    def _dropped_under_us(self) -> StoreClosedError:
        return StoreClosedError(f"the store at {self._path} was deleted or made anew by the process that writes it")

    def _describe(self) -> str:
        return f"the store at {self._path}"

    # ---- reads -------------------------------------------------------------------------------

    def get(self, id: str) -> Item | None:
        """The item with this id (vector, label, metadata; thumbnail not loaded), or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT id, vector, label, metadata FROM items WHERE id = ?", (id,)).fetchone()
        return None if row is None else item_from_row(row)

    def get_many(self, ids: Sequence[str]) -> list[Item | None]:
        """get() for many ids in few queries (e.g. re-ranking candidates): one entry per id, in
        order, None where absent."""
        found: dict[str, Item] = {}
        unique = list(dict.fromkeys(check_list(ids, "get_many")))
        with self._reading() as conn:
            for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit is 999 on old builds
                chunk = unique[i:i + 500]
                rows = conn.execute("SELECT id, vector, label, metadata FROM items WHERE id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                found.update((row[0], item_from_row(row)) for row in rows)
        return [found.get(i) for i in ids]

    def thumbnail(self, id: str) -> bytes | None:
        """The stored thumbnail bytes of an item, or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT data FROM thumbnails WHERE id = ?", (id,)).fetchone()
        return None if row is None else bytes(row[0])

    def __contains__(self, id: str) -> bool:
        with self._rw.read():
            return id in self._fid_of

    def __len__(self) -> int:
        """The number of items, count() (in memory: no read of the database). MilvusStore's len() is its count()
        too, a query to Milvus."""
        return self.count()

    def __bool__(self) -> bool:
        """True, however many items: an empty store is still an open store (`if store:` asks that, not
        whether it holds anything; len(store) says that)."""
        return True

    def has_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` present in the store (fast: in memory)."""
        check_list(ids, "has_ids")
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
        keys = list(dict.fromkeys(check_list(keys, "index_metadata", "metadata keys")))
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise InvalidItemError(f"metadata keys must be non-empty strings, got {bad[0]!r:.40}")
        self._check_open()
        with self._rw.read():
            todo = [k for k in keys if k not in self._meta.by_key]
            if todo:
                self._meta.build(todo, keep=True)
            return {k: _filter.distinct_values(self._meta.by_key[k]) for k in keys}   # a list's elements too

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
        with self._reading() as conn:
            if where is not None:
                rows = self._filtered_page(conn, offset, limit, label, _filter.check_where(where), after)
            elif label is None:
                rows = conn.execute("SELECT seq, id, vector, label, metadata FROM items WHERE seq > ? ORDER BY seq "
                                    "LIMIT ? OFFSET ?", (after, limit, offset)).fetchall()
            else:
                rows = conn.execute("SELECT seq, id, vector, label, metadata FROM items WHERE label = ? AND "
                                    "seq > ? ORDER BY seq LIMIT ? OFFSET ?", (label, after, limit, offset)).fetchall()
        return [(r[0], item_from_row(r[1:])) for r in rows]

    def _filtered_page(self, conn: sqlite3.Connection, offset: int, limit: int, label: str | None,
                       where: tuple, after: int) -> list[tuple]:
        """list_positions' rows with this label matching `where`: the page's seqs (= FAISS ids, in insertion
        order) chosen from the in-memory indexes under the read lock, then read from the database after it is
        let go (so that no write waits on that read). A row replaced or deleted in between (committed before it
        was applied, or after the choice) is no longer there: the page goes on from the last seq chosen until it
        is full or the matching items run out, so that a page is short only at the end of the listing. An item
        replaced after it was read can be met again there, at its new seq: the page keeps that later version
        only (an id at most once in a page, in insertion order)."""
        rows: list[tuple] = []
        while len(rows) < limit:
            with self._rw.read():
                fids = self._filter_fids(label, where)
                start = int(np.searchsorted(fids, after, side="right")) + offset
                seqs = fids[start:start + limit - len(rows)].tolist()
            if not seqs:
                break
            rows = _latest_of_each(rows + conn.execute(
                f"SELECT seq, id, vector, label, metadata FROM items WHERE seq IN ({','.join('?' * len(seqs))}) "
                "ORDER BY seq", seqs).fetchall())
            after, offset = seqs[-1], 0   # the offset counted from the first `after`: skipped once
        return rows

    def _filter_fids(self, label: str | None, where: tuple | None) -> np.ndarray:
        """FAISS ids of the items with this label (any label when None) whose metadata matches
        `where` (see _filter), from the label and metadata indexes; cached until the next write."""
        return self._meta.filter_fids(label, where, self._version)

    def backup(self, dest) -> dict:
        """A consistent copy of this store into the new or empty folder `dest`, as index.backup(path, dest) makes
        one, read through the store's own connection: a close() meanwhile (its gallery dropped, or replaced by a
        restore) waits for the copy to end, where a copy made by path met the files going (StoreClosedError when
        the store is closing already). Returns backup's {"items", "last_seq", "model_id", "dim", "bytes"}.

        A read-only store follows a database another process writes and may drop or make anew at any moment, its
        -wal and -shm files going first (the database file after them): a copy then read without the log's pages
        (no tables), and failing so where the database is gone within a moment, is StoreClosedError, as any read
        of a store dropped under it is."""
        with self._reading() as conn:
            try:
                return copy_open_store(conn, self._path, Path(dest))
            except (sqlite3.DatabaseError, StoreError) as exc:
                if not self.config.read_only or isinstance(exc, (StorageError, StoreClosedError)):
                    raise
                changed = self.folder_changed()
                if not changed:
                    time.sleep(_GONE_WITHIN)
                    changed = self.folder_changed()
                if not changed:
                    raise   # the database this store opened is still there: a failure of its own, said as it is
                log.info("index: the copy of %s failed as its writer dropped or replaced it (%s)", self._path, exc)
                raise self._dropped_under_us() from None

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Snapshot (when writable and anything changed) and release files and the lock."""
        if self._closed:
            return
        t = self._maint_thread
        if t is not None:
            t.join()
        try:
            if not self.config.read_only and self._applied_seq != self._snapshot_seq:
                self.snapshot()   # (may rebuild: it takes _writer and reads the database itself)
        except OSError as exc:  # a full disk: the database holds every write, the next open replays them
            log.error("index: no snapshot written at close (%s); the next open replays the writes since "
                      "the last one from the database", exc)
        finally:
            # Connections are closed only when no other thread is using one: a connection closed under a
            # statement another thread was stepping crashed the process (a gallery dropped or replaced under
            # load). Writes run under _writer and check _closed there; reads run in _reading, counted.
            # _snapshot_lock first, as snapshot() (which may rebuild, taking _writer) takes them: a background
            # snapshot under way ends before, and one that begins after finds the store closed, so that none is
            # written by path into a folder a drop or a restore has given to another store
            with self._snapshot_lock, self._writer:
                with self._readers_cond:   # no new read of the database begins; those under way end first
                    self._closing = True
                    while self._readers:
                        self._readers_cond.wait()
                self._closed = True
                self._release()

    def _release(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        with self._readers_cond:   # (no read under way: close() waited for them; opening's failure: its own)
            idle, self._idle = self._idle, []
        for c in conns + idle:
            c.close()   # close() returns with every connection closed: the last (the one below) removes the -wal
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


def _latest_of_each(rows: list[tuple]) -> list[tuple]:
    """Rows (seq, id, ...) in seq order with each id's last row only: an item's later version."""
    last = {row[1]: n for n, row in enumerate(rows)}
    return [row for n, row in enumerate(rows) if last[row[1]] == n]

