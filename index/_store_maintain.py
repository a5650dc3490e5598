"""Keeping a Store's FAISS index in shape: the rebuild a write makes due (training an approximate index, compacting
removed vectors), run in the write call or on the background thread, and the snapshot of the index; and where
the store stands (position, reaches, folder_changed, info). Part of Store (see _store.py)."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import faiss
import numpy as np

from . import _faiss
from ._checks import parse_position
from ._errors import StoreClosedError

log = logging.getLogger("index")

COMPACT_MIN = 256          # removed-but-present vectors (HNSW, refine) tolerated before a rebuild
SYNC_REBUILD_MAX = 100_000  # up to this size a due rebuild runs in the write call, else in background


class StoreMaintenance:
    """Store's rebuilds and snapshots (the rebuild under _rebuild_lock, off to the side of searches and writes;
    the snapshot under _snapshot_lock), and its position in its writer's history. The fields it uses are Store's,
    declared in Store.__init__."""

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
            self._check_open()   # (close() takes _snapshot_lock: a store closed while this one waited writes none)
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


    # ---- where the store stands -----------------------------------------------------------

    def position(self) -> str:
        """Where the state searches see stands in the writer's history, as a token ("1042.7": the
        last write's sequence number, then the count of label/metadata edits). It only moves forward.
        A writer's token taken after a write names a state that holds that write: a read-only replica
        `reaches` it once it has applied the write (`refresh`)."""
        self._check_open()
        return f"{self._applied_seq}.{self._edits}"

    def reaches(self, position: str) -> bool:
        """True when the state searches see is at least as new as `position` (a `position()` token,
        of this store's writer or of a replica of it). InvalidItemError when it is not such a token."""
        seq, edits = parse_position(position)
        return seq <= self._applied_seq and edits <= self._edits

    def folder_changed(self) -> bool:
        """True when the store's folder no longer holds the database this store opened: deleted, or made
        anew by another process (a read-only follower of a gallery that was dropped, then made again)."""
        try:
            st = os.stat(self._db_path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._db_file

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
