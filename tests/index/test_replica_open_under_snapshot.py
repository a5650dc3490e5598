"""A read-only store opened while its writer writes and snapshots: the writer's snapshot, saved between the
replica's read of the record (last_seq, the rows) and its read of the snapshot, is ahead of the record it read.
That is no lost write: the replica reads the record again and uses the snapshot (it logged "the database lost
acknowledged writes ... the snapshot is moved to ..." at ERROR, moved nothing, and rebuilt the index from
scratch). A snapshot still ahead of the record is lost writes, said without claiming a move a read-only store
does not make."""
from __future__ import annotations

import logging
import sqlite3

import numpy as np

from index import Item, Store, StoreConfig

from .conftest import DIM, unit

MODEL = "test-model@000000000000"


def _items(start: int, n: int) -> list[Item]:
    vecs = unit(np.random.default_rng(start), n)
    return [Item(f"x{start + j}", vecs[j], metadata={"i": start + j}) for j in range(n)]


def test_replica_opened_while_its_writer_snapshots_uses_the_snapshot_without_an_error(tmp_path, caplog):
    path = tmp_path / "store"
    writer = Store.open(StoreConfig(path, dim=DIM, model_id=MODEL, snapshot_every=0))
    try:
        writer.upsert(_items(0, 50))
        writer.snapshot()
        late = _items(50, 30)

        class WriterBetweenTheReads(Store):
            """A replica whose writer commits and snapshots once the replica has read the record (last_seq, the
            rows), before it reads the snapshot: what the writer's background snapshot does at any moment."""
            _done = False

            def _load_snapshot(self):
                if not WriterBetweenTheReads._done:
                    WriterBetweenTheReads._done = True
                    writer.upsert(late)
                    writer.delete(["x3"])
                    writer.snapshot()
                return super()._load_snapshot()

        caplog.set_level(logging.DEBUG, logger="index")
        replica = WriterBetweenTheReads.open(StoreConfig(path, read_only=True))
        try:
            assert WriterBetweenTheReads._done
            problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert not problems, problems
            assert replica.info()["snapshot_seq"] == writer.info()["snapshot_seq"] == 81   # used, not rebuilt
            assert replica.count() == writer.count() == 79 and replica.position() == writer.position()
            assert "x3" not in replica and replica.get("x79") is not None
            assert [h.id for h in replica.search(late[-1].vector, k=1)[0]] == ["x79"]
            assert replica.refresh() == (0, 0, 0)
        finally:
            replica.close()
        assert (path / "index.snapshot").exists() and not list(path.glob("index.snapshot.bad-*"))
    finally:
        writer.close()


def _lost_writes(path) -> None:
    """A store whose snapshot holds writes its database no longer does (restored from an older copy)."""
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL, snapshot_every=0)) as store:
        store.upsert(_items(0, 40))
        store.snapshot()
    conn = sqlite3.connect(path / "store.sqlite3")
    with conn:
        conn.execute("DELETE FROM items WHERE seq > 30")
        conn.execute("UPDATE meta SET value = '30' WHERE key = 'last_seq'")
    conn.close()


def test_lost_writes_seen_by_a_replica_leave_the_snapshot_in_place_and_say_so(tmp_path, caplog):
    path = tmp_path / "store"
    _lost_writes(path)
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(StoreConfig(path, read_only=True)) as replica:
        assert replica.count() == 30 and replica.info()["snapshot_seq"] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "lost acknowledged writes" in errors[0], errors
    assert "moved to" not in errors[0] and "moved it" not in errors[0], errors[0]   # (it moves nothing)
    assert f"left {path / 'index.snapshot'} in place" in errors[0], errors[0]
    assert (path / "index.snapshot").exists() and not list(path.glob("index.snapshot.bad-*"))


def test_lost_writes_seen_by_the_writer_move_the_snapshot_aside_and_name_where(tmp_path, caplog):
    path = tmp_path / "store"
    _lost_writes(path)
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL, snapshot_every=0)) as store:
        assert store.count() == 30
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    aside = list(path.glob("index.snapshot.bad-*"))
    assert len(errors) == 1 and "lost acknowledged writes" in errors[0] and len(aside) == 1, errors
    assert f"moved it to {aside[0]}" in errors[0], errors[0]
