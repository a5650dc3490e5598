"""A read-only store (a replica) never reads a database other than the one it opened: when its writer drops the
gallery and makes it anew (or a restore replaces it), a read after that (in any thread, on any connection) gets
StoreClosedError (503 over HTTP; the service then opens the new store), not the new database's rows under the
old store's ids and seqs (a filtered listing returned items that do not match, an exact or grouped search found
the database disagreeing for 10 s and failed, a half-made database was "no such table": 500s under load)."""
from __future__ import annotations

import shutil
import sqlite3
import threading

import numpy as np
import pytest

from index import Item, StoreClosedError

from .conftest import unit


def _in_new_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def _items(prefix, vectors, color):
    return [Item(f"{prefix}{i}", v, "x", {"color": color}) for i, v in enumerate(vectors)]


def test_a_replica_refuses_to_read_the_database_made_in_place_of_its_own(open_store, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "store"
    writer = open_store(path)
    writer.upsert(_items("old-", unit(rng, 20), "red"))
    replica = open_store(path, read_only=True)
    assert [it.id for it in replica.list(limit=3, where={"color": "red"})] == ["old-0", "old-1", "old-2"]

    writer.close()
    shutil.rmtree(path)   # dropped, then made anew with other items at the same seqs
    writer2 = open_store(path)
    writer2.upsert(_items("new-", unit(rng, 20), "blue"))
    assert replica.folder_changed()

    for read in (lambda: replica.list(limit=5, where={"color": "red"}), lambda: replica.list(limit=5),
                 lambda: replica.get("old-3"), lambda: replica.refresh()):
        got = _in_new_thread(read)
        assert isinstance(got.get("error"), StoreClosedError), got
    # nor does a read on a connection opened before (to the database the store opened, kept idle for the next
    # read, whichever thread makes it): once the writer has dropped or replaced the gallery, every read is refused
    with pytest.raises(StoreClosedError):
        replica.list(limit=2, where={"color": "red"})


def test_a_replica_refuses_a_half_made_database_in_place_of_its_own(open_store, tmp_path):
    path = tmp_path / "store"
    writer = open_store(path)
    writer.upsert(_items("old-", unit(np.random.default_rng(1), 5), "red"))
    replica = open_store(path, read_only=True)
    writer.close()
    shutil.rmtree(path)
    path.mkdir()
    sqlite3.connect(path / "store.sqlite3").close()   # the writer's file, before its tables are made
    got = _in_new_thread(lambda: replica.list(limit=5))
    assert isinstance(got.get("error"), StoreClosedError), got
    with pytest.raises(StoreClosedError):
        replica.refresh()   # its connection is opened at the first refresh: to the half-made database
