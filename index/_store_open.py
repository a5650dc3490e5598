"""Opening a Store: the lock on its folder, the meta table checked against the config, and the FAISS index
recovered (snapshot + replay of the writes after it, or built from the database) with the vector plumbing
that builds it. Part of Store (see _store.py)."""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

from . import _db, _faiss
from ._checks import asked_for
from ._errors import (InvalidItemError, ModelMismatchError, StoreCorruptError, StoreError, StoreLockedError,
                      StoreMissingError)
from ._types import vectors_from_blobs

log = logging.getLogger("index")

LOCK_NAME = "LOCK"


class StoreOpening:
    """Store's opening and recovery (its __init__ calls _open, which sets the fields __init__ declares without
    a value and fills in the in-memory maps), and the reading of vectors into an index."""

    # ---- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        cfg = self.config
        if cfg.read_only:
            if not self._db_path.exists():
                raise StoreMissingError(f"no store at {self._path} ({_db.DB_NAME} is missing)")
        else:
            if not self._db_path.exists():   # before anything is made: no empty store is left behind
                self._check_new_store_config()
                if cfg.index:
                    _faiss.validate_spec(cfg.index, cfg.dim)
            try:
                self._path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise StoreError(f"cannot make a store at {self._path}: it, or a folder above it, is a file") from None
            self._take_lock()
            _db.check_wal(self._db_path)
        self._conn = _db.connect(self._db_path, cfg.read_only)
        st = os.stat(self._db_path)
        self._db_file = (st.st_dev, st.st_ino)   # folder_changed(): is it still this file?
        try:
            recorded = _db.get_meta(self._conn)
        except sqlite3.Error:   # no tables yet (a new store), or damage said below
            recorded = {}
        _db.check_schema(recorded, self._path)   # before anything is written to a newer simsearch's store
        if not cfg.read_only:
            _db.init_schema(self._conn)
            self._has_log = _db.init_changes(self._conn)   # idempotent: restores a trigger lost by hand too
        try:
            meta = _db.get_meta(self._conn)
        except sqlite3.DatabaseError as exc:
            if cfg.read_only and "no such table" in str(exc):  # a writer is creating it this moment
                raise StoreMissingError(f"the store at {self._path} has no tables yet") from None
            raise StoreCorruptError(f"cannot read the store's database {self._db_path}: {exc}") from None
        self._init_meta(meta)
        self._open_index()
        _faiss.blas_min_queries(self._index)   # measured now (if at all), not in the first search

    def _check_new_store_config(self) -> None:
        """StoreError unless the config says what a new store records first: its model id and dimension."""
        cfg = self.config
        if cfg.model_id is None or cfg.dim is None:
            raise StoreError(f"a new store at {self._path} needs model_id and dim "
                             f"(got model_id={cfg.model_id!r}, dim={cfg.dim!r})")

    def _take_lock(self) -> None:
        fd = os.open(self._path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if holder == str(os.getpid()):   # flock is per open file: another Store of this process holds it
                where = ("this process (another Store object on it, not closed: close() it, or drop every "
                         "reference to it)")
            else:
                where = f"another process (pid {holder or '?'})"
            err = StoreLockedError(f"the store at {self._path} is open for writing in {where}; "
                                   "open it read_only to inspect it")
            err.pid = int(holder) if holder.isdigit() else None   # the holder's, for the service to name
            raise err from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        # A Store dropped without close() lets go of the lock when it is collected (the finalizer holds
        # the descriptor, not the Store); close() runs the same finalizer, so the descriptor closes once
        self._lock_done = weakref.finalize(self, os.close, fd)

    def _init_meta(self, meta: dict[str, str]) -> None:
        cfg = self.config
        if "model_id" in meta:
            have_model, have_dim = meta["model_id"], int(meta["dim"])
            if (cfg.model_id is not None and cfg.model_id != have_model) or \
                    (cfg.dim is not None and cfg.dim != have_dim):
                raise ModelMismatchError(
                    f"the store at {self._path} holds vectors of model {have_model!r} (dim "
                    f"{have_dim}), not of {asked_for(cfg.model_id, cfg.dim)}; use another "
                    f"--data folder, or move this gallery to the new model with `simsearch index reembed "
                    f"NEWDATA --data DATA --model NEW` (it re-embeds the stored thumbnails) and use NEWDATA",
                    stored_model=have_model)
            self.model_id, self.dim = have_model, have_dim
            self.spec = cfg.index or meta.get("index", "flat")
            self._last_seq = int(meta.get("last_seq", 0))
            self._edits = int(meta.get("edits", 0))
            self._changes_pruned = int(meta.get("changes_pruned", 0))
        else:
            if cfg.read_only:
                raise StoreMissingError(f"the store at {self._path} is empty (no model recorded)")
            self._check_new_store_config()   # (a database left without its model by an older version)
            if not isinstance(cfg.dim, int) or cfg.dim <= 0:
                raise InvalidItemError(f"dim must be a positive integer, got {cfg.dim!r}")
            self.model_id, self.dim = cfg.model_id, cfg.dim
            self.spec = cfg.index or "flat"
            self._last_seq = 0
        _faiss.validate_spec(self.spec, self.dim)
        self._needs_training = _faiss.needs_training(self.spec, self.dim)
        changed = [(k, v) for k, v in (("model_id", self.model_id), ("dim", str(self.dim)),
                                        ("index", self.spec), ("schema", str(_db.SCHEMA_VERSION)),
                                        ("last_seq", str(self._last_seq))) if meta.get(k) != v]
        if changed and not cfg.read_only:  # only what changed: a store on a full disk still opens
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", changed)
        if "edits" not in meta and not cfg.read_only:
            # The count of label/metadata edits, which lets read-only followers skip comparing them. A
            # store from before it starts counting here; on a full disk it starts at a later open
            # (without it, followers compare every time, which is slower, not wrong).
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('edits', '0')")
            except sqlite3.OperationalError as exc:
                if self._conn.in_transaction:   # a failed COMMIT leaves it open
                    self._conn.execute("ROLLBACK")
                if _db.disk_refusal(exc) is None:
                    raise


    # ---- recovery: snapshot + replay --------------------------------------------------------

    def _open_index(self) -> None:
        t0 = time.perf_counter()
        self._read_rows()
        snap = self._load_snapshot()
        if snap is None:
            self._rebuild_locked(reason="no usable snapshot")
            self._snapshot_seq = 0
        else:
            self._index, self._factory = snap.index, snap.meta["factory"]
            held = snap.index.ntotal   # the snapshot's own, before the replay below adds to the index
            _faiss.make_room(self._index)
            self._trained_n = int(snap.meta.get("trained_n", 0))
            self._snapshot_seq = snap.seq
            live = np.fromiter(self._rows.keys(), dtype=np.int64, count=len(self._rows))
            in_index = _faiss.ids_of(self._index)
            stale = in_index[~np.isin(in_index, live)]        # deleted or replaced since
            tail = live[live > snap.seq]                      # written since
            missing = live[(live <= snap.seq) & ~np.isin(live, in_index)]
            if len(missing):
                log.error("index: snapshot lacks %d rows it should hold; adding them from the "
                          "record of truth", len(missing))
            self._remove_fids(stale)
            self._add_fids(np.concatenate([missing, tail]))
            log.info("index: loaded snapshot at seq %d (%d vectors), replayed %d writes and %d "
                     "removals after it", snap.seq, held, len(tail), len(stale))
        self._applied_seq = self._last_seq
        self._maybe_train_locked()
        self._setup_gpu()
        if snap is None and self._rows and not self.config.read_only:
            # The index was rebuilt from SQLite: snapshot it now (in the background) so that the
            # next start, even after a crash, does not pay for the rebuild again.
            self._maint_thread = threading.Thread(target=self._background, args=(None, True),
                                                  name="index-maintenance", daemon=True)
            self._maint_thread.start()
        log.info("index: opened %s: %d items, %s, model %s, dim %d, seq %d (%.2fs)", self._path,
                 len(self._rows), _faiss.describe(self._index), self.model_id, self.dim,
                 self._applied_seq, time.perf_counter() - t0)

    def _read_rows(self) -> None:
        """The items' rows (seq, id, label, metadata) into the in-memory maps, and _last_seq raised to the newest
        row's seq when the record of it was read before a write the rows hold."""
        if self.config.read_only:
            # Read before the rows: a change committed in between is then applied again by the first
            # refresh, which is harmless, rather than missed.
            self._log_seen = _db.change_log_top(self._conn)
        self._rows.clear()   # (in place: the metadata indexes hold these maps)
        self._fid_of.clear()
        self._by_label.clear()
        for seq, id_, label, meta in self._conn.execute("SELECT seq, id, label, metadata FROM items"):
            self._rows[seq] = (id_, label, meta)
            self._fid_of[id_] = seq
            self._by_label.setdefault(label, set()).add(seq)
        max_row_seq = max(self._rows, default=0)
        if max_row_seq > self._last_seq:  # trust the rows
            # A replica read the record and the rows in two transactions, and its writer committed in between:
            # nothing wrong. A writer's own store cannot get here with our writes.
            log.log(logging.DEBUG if self.config.read_only else logging.WARNING,
                    "index: rows up to seq %d beyond recorded last_seq %d", max_row_seq, self._last_seq)
            self._last_seq = max_row_seq

    def _reread_record(self) -> None:
        """A read-only store's record (last_seq, then the rows) read again: its writer committed and saved a snapshot
        of what it committed after this store read them, so that the snapshot read since is ahead of them."""
        try:
            recorded = int(_db.get_meta(self._conn).get("last_seq", 0))
        except (sqlite3.Error, ValueError):
            recorded = 0   # what the first read found stands; the check after says what is wrong
        self._last_seq = max(self._last_seq, recorded)
        self._read_rows()

    def _put_aside(self) -> str:
        """The snapshot moved out of the way of the next open, for inspection, and what was done, as a log says it:
        a read-only store moves nothing (the snapshot is its writer's), nor does a writer that cannot."""
        if self.config.read_only:
            return f"left {self._snap_path} in place (this store is read-only)"
        aside = self._set_aside(self._snap_path)
        if aside == self._snap_path:
            return f"could not move {self._snap_path} aside (left in place)"
        return f"moved it to {aside} for inspection"

    def _load_snapshot(self) -> _faiss.Snapshot | None:
        if not self._snap_path.exists():
            return None
        try:
            snap = _faiss.read_snapshot(self._snap_path)
        except _faiss.SnapshotError as exc:
            log.error("index: snapshot %s is unusable (%s); %s; rebuilding the index from the record of truth "
                      "(%d items)", self._snap_path, exc, self._put_aside(), len(self._rows))
            return None
        m = snap.meta
        if (m.get("model_id"), m.get("dim"), m.get("spec")) != (self.model_id, self.dim, self.spec):
            log.warning("index: snapshot is for model %s dim %s index %s, this service asks for %s dim %d "
                        "index %s; rebuilding", m.get("model_id"), m.get("dim"), m.get("spec"),
                        self.model_id, self.dim, self.spec)
            return None
        if snap.seq > self._last_seq and self.config.read_only:
            # The writer committed and snapshotted between this store's read of the record and of the snapshot:
            # the record, read again now, holds what the snapshot does (unless the database did lose writes)
            log.debug("index: snapshot at seq %d is ahead of the record read at seq %d: reading the record again",
                      snap.seq, self._last_seq)
            self._reread_record()
        if snap.seq > self._last_seq:
            log.error("index: snapshot is at seq %d but the record of truth ends at seq %d: the "
                      "database lost acknowledged writes (restored from an older copy, or its "
                      "journal was removed). Serving what the database holds; %s", snap.seq, self._last_seq,
                      self._put_aside())
            return None
        return snap

    @staticmethod
    def _set_aside(path: Path) -> Path:
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(path, aside)
        except OSError:
            return path
        return aside

    def _rebuild_locked(self, reason: str) -> None:
        """Build the index from the record of truth (caller holds the writer lock or is opening)."""
        n = len(self._rows)
        train = None
        if self._needs_training and n >= self._train_threshold():
            train = self._training_sample(np.fromiter(self._rows.keys(), dtype=np.int64, count=n))
        index, factory = _faiss.build(self.spec, self.dim, train)
        self._index, self._factory = index, factory
        self._trained_n = 0 if train is None else n
        self._dead = set()
        self._add_fids(np.fromiter(self._rows.keys(), dtype=np.int64, count=n))
        log.info("index: built %s from %d items (%s)", _faiss.describe(index), n, reason)

    def _train_threshold(self) -> int:
        """The gallery size at which an approximate kind trains: config.train_threshold, but never below the fewest
        vectors the kind can be trained on (_faiss.min_training_points): below that a write would find the store due,
        rebuild the same flat index and log it, at every write."""
        return max(self.config.train_threshold, 1, _faiss.min_training_points(self.spec, self.dim))

    def _maybe_train_locked(self) -> bool:
        """Train the approximate index once the gallery is big enough (until then: exact)."""
        if (_faiss.is_exact(self._index) and self._needs_training
                and len(self._rows) >= self._train_threshold()):
            self._rebuild_locked(reason=f"gallery reached the training threshold "
                                        f"{self._train_threshold()}")
            return True
        return False

    def _setup_gpu(self) -> None:
        want = self.config.use_gpu
        if want is False:
            return
        if _faiss.gpu_available():
            self._gpu = _faiss.GpuMirror()
            log.info("index: GPU FAISS available; unfiltered searches run on GPU 0")
        elif want:
            log.warning("index: use_gpu=True but this FAISS build has no GPU support or sees no "
                        "GPU; searching on the CPU")

    def _fetch_vectors(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, vectors) of the rows with these seqs, read from the database in chunks."""
        fids = np.sort(np.asarray(fids, dtype=np.int64))
        with self._reading() as conn:
            return self._fetch_vectors_with(conn, fids)

    def _fetch_vectors_with(self, conn, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_ids, out_vecs = [], []
        for start in range(0, len(fids), 20_000):
            chunk = fids[start:start + 20_000]
            if len(chunk) > 900:  # a range scan on the seq index beats a long IN list
                rows = conn.execute("SELECT seq, vector FROM items WHERE seq BETWEEN ? AND ?",
                                    (int(chunk[0]), int(chunk[-1]))).fetchall()
                want = set(chunk.tolist())
                rows = [r for r in rows if r[0] in want]
            else:
                rows = conn.execute(f"SELECT seq, vector FROM items WHERE seq IN "
                                    f"({','.join('?' * len(chunk))})", [int(x) for x in chunk]).fetchall()
            if rows:
                out_ids.append(np.array([r[0] for r in rows], dtype=np.int64))
                out_vecs.append(vectors_from_blobs([r[1] for r in rows], self.dim))
        if not out_ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(out_ids), np.concatenate(out_vecs)

    def _add_fids(self, fids: np.ndarray, index: faiss.Index | None = None) -> None:
        """Add the rows with these seqs to `index` (default: the live one), vectors from the database."""
        index = self._index if index is None else index
        fids = np.asarray(fids, dtype=np.int64)
        for start in range(0, len(fids), 100_000):
            ids, vecs = self._fetch_vectors(fids[start:start + 100_000])
            if len(ids):
                index.add_with_ids(vecs, ids)

    def _training_sample(self, fids: np.ndarray) -> np.ndarray:
        n = len(fids)
        m = _train_sample(n)
        if m < n:
            fids = np.random.default_rng(0).choice(fids, m, replace=False)
        return self._fetch_vectors(fids)[1]

    def _remove_fids(self, fids: Iterable[int], index: faiss.Index | None = None,
                     dead: set[int] | None = None) -> None:
        """Remove these FAISS ids (or hide them via `dead`: where the index cannot remove, and on a flat index until
        more than flat_hidden_max of them are hidden, then removed in one pass)."""
        index = self._index if index is None else index
        dead = self._dead if dead is None else dead
        fids = np.asarray(list(fids) if not isinstance(fids, np.ndarray) else fids, dtype=np.int64)
        if not len(fids):
            return
        if _faiss.is_exact(index):
            # FAISS's remove_ids on a flat index scans every id and moves every vector after the first removed: O(n)
            # under the write lock, whatever the count (49 ms for one id at 1M vectors of dim 256), so every delete
            # stalled every search. Hidden, searches read past them (_faiss_locked); removed together, one pass.
            dead.update(fids.tolist())
            if len(dead) > flat_hidden_max(index.ntotal):
                index.remove_ids(faiss.IDSelectorBatch(np.fromiter(dead, dtype=np.int64, count=len(dead))))
                dead.clear()
        elif _faiss.supports_remove(index):
            index.remove_ids(faiss.IDSelectorBatch(fids))
        else:
            dead.update(fids.tolist())


FLAT_HIDDEN_MIN = 256    # removed vectors a flat index hides before it removes them all at once
FLAT_HIDDEN_CAP = 1024   # a search reads this many more at most (a GPU search takes k <= 2048)


def flat_hidden_max(ntotal: int) -> int:
    """The most removed vectors a flat index of `ntotal` vectors hides (_remove_fids): a thousandth of the index, so
    that the one pass removing them (O(ntotal)) costs a delete about as much whatever the size, within
    [FLAT_HIDDEN_MIN, FLAT_HIDDEN_CAP]; a search reads that many more candidates while they are hidden."""
    return max(FLAT_HIDDEN_MIN, min(ntotal // 1000, FLAT_HIDDEN_CAP))


def _train_sample(n: int) -> int:
    # FAISS k-means uses at most 256 points a centroid; sample no more than that from SQLite.
    return min(n, 256 * _faiss.nlist_for(n))
