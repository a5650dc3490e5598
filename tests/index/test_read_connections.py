"""A store's reads share a small pool of SQLite connections, each read holding one for its length: a service that
keeps many galleries open and reads them from a pool of long-lived threads (anyio's: up to 40, alive while idle)
kept one connection per thread per gallery, two open files each, and under load its reads of open galleries
failed with 'unable to open database file' once the process reached its open-file limit (1024 by default)."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index import Item, StoreClosedError
from index._store import _IDLE_READ_CONNS

from .conftest import unit

THREADS = 40   # anyio's default worker threads


def _open_files(folder: Path, suffix: str = "") -> int:
    """This process's open descriptors of the store database in `folder` (with `suffix`: its -wal, -shm; "*": all
    three)."""
    db = str((folder / "store.sqlite3").resolve())
    names = {db + s for s in ("", "-wal", "-shm")} if suffix == "*" else {db + suffix}
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) in names
        except OSError:   # closed since the listing
            pass
    return count


class _LivingThreads:
    """THREADS threads that run the jobs given to them and stay alive between jobs, as a service's worker threads
    do (the per-thread connections they once opened closed only when a thread ended)."""

    def __init__(self, n: int = THREADS) -> None:
        self._jobs: list[list] = [[] for _ in range(n)]
        self._go = [threading.Semaphore(0) for _ in range(n)]
        self._done = threading.Semaphore(0)
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        while True:
            self._go[i].acquire()
            job = self._jobs[i].pop()
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # noqa: BLE001
                self.errors.append(exc)
            finally:
                self._done.release()

    def each(self, job_of) -> None:
        """Every thread runs job_of(its number); returns once all have ended theirs (the threads live on)."""
        for i in range(len(self._threads)):
            self._jobs[i].append(lambda i=i: job_of(i))
            self._go[i].release()
        for _ in self._threads:
            assert self._done.acquire(timeout=60)
        assert not self.errors, self.errors[:3]

    def stop(self) -> None:
        for i, t in enumerate(self._threads):
            self._jobs[i].append(None)
            self._go[i].release()
        for t in self._threads:
            t.join(10)


@pytest.fixture
def living_threads():
    threads = _LivingThreads()
    yield threads
    threads.stop()


def _fill(store, n=20, seed=0):
    vecs = unit(np.random.default_rng(seed), n)
    store.upsert([Item(f"id{i}", vecs[i], "x", {"n": i}) for i in range(n)])


@pytest.mark.parametrize("read_only", [False, True])
def test_reads_of_a_store_from_forty_living_threads_leave_at_most_the_idle_connections_open(
        open_store, tmp_path, living_threads, read_only):
    folder = tmp_path / "s"
    writer = open_store(folder)
    _fill(writer)
    store = open_store(folder, read_only=True) if read_only else writer
    before = _open_files(folder, "*")
    one_at_a_time = threading.Lock()

    def read(i):
        with one_at_a_time:
            assert store.get(f"id{i % 20}").id == f"id{i % 20}"
            assert len(store.list(limit=5, where={"n": i % 20})) == 1

    living_threads.each(read)
    # each connection: the database's descriptor and its -wal's (the -shm map is shared); per thread it was 80 more
    assert _open_files(folder, "*") <= before + 2 * _IDLE_READ_CONNS
    living_threads.each(read)
    assert _open_files(folder, "*") <= before + 2 * _IDLE_READ_CONNS


def test_concurrent_reads_each_get_a_connection_at_once_and_all_but_the_idle_ones_close_after(
        open_store, tmp_path, living_threads):
    folder = tmp_path / "s"
    store = open_store(folder)
    _fill(store)
    wal_before = _open_files(folder, "-wal")
    inside = threading.Barrier(THREADS, timeout=30)   # passed only while all THREADS reads are under way together
    conns = []

    def read(i):
        with store._reading() as conn:
            conns.append(conn)
            cursor = conn.execute("SELECT id FROM items ORDER BY seq")
            assert cursor.fetchone() == ("id0",)   # a statement under way on each
            inside.wait()
            assert len(cursor.fetchall()) == 19

    living_threads.each(read)
    assert len({id(c) for c in conns}) == THREADS   # none shared, none waited for another
    # What a read ends with is closed but for _IDLE_READ_CONNS: their -wal descriptors and page caches go. (SQLite
    # keeps a closed connection's database descriptor while the writer's holds its lock, for the next it opens.)
    assert _open_files(folder, "-wal") <= wal_before + _IDLE_READ_CONNS
    assert len(store._idle) == _IDLE_READ_CONNS
    living_threads.each(lambda i: store.get("id1"))   # the idle ones serve the next reads; the burst opens no more
    assert _open_files(folder, "-wal") <= wal_before + _IDLE_READ_CONNS


def test_many_stores_read_from_forty_living_threads_hold_few_connections_each(tmp_path, open_store, living_threads):
    folders = [tmp_path / f"g{n}" for n in range(12)]
    stores = []
    for n, folder in enumerate(folders):
        stores.append(open_store(folder))
        _fill(stores[-1], n=5, seed=n)
    wal_before = sum(_open_files(f, "-wal") for f in folders)

    def read(i):
        for k in range(len(stores)):
            store = stores[(i + k) % len(stores)]
            assert store.get("id3").id == "id3"
            assert [it.id for it in store.list(limit=2)] == ["id0", "id1"]

    living_threads.each(read)
    living_threads.each(read)
    # 40 threads x 12 stores: 480 connections, 960 open files when each thread kept its own
    assert sum(_open_files(f, "-wal") for f in folders) <= wal_before + len(folders) * _IDLE_READ_CONNS
    assert all(len(s._idle) <= _IDLE_READ_CONNS for s in stores)


@pytest.mark.parametrize("read_only", [False, True])
def test_close_waits_for_reads_under_way_and_returns_with_every_connection_closed(
        open_store, tmp_path, living_threads, read_only):
    folder = tmp_path / "s"
    writer = open_store(folder)
    _fill(writer, n=50)
    store = open_store(folder, read_only=True) if read_only else writer
    living_threads.each(lambda i: store.get(f"id{i % 50}"))   # idle connections, their threads alive
    started, release, ended = threading.Event(), threading.Event(), threading.Event()
    got = {}

    def long_read():
        with store._reading() as conn:
            cursor = conn.execute("SELECT id FROM items ORDER BY seq")
            got["first"] = cursor.fetchone()
            started.set()
            release.wait(30)
            got["rest"] = len(cursor.fetchall())   # the statement runs on after close() was called
        ended.set()

    reader = threading.Thread(target=long_read)
    reader.start()
    assert started.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive()   # waiting for the read
    release.set()
    closer.join(30)
    reader.join(30)
    assert not closer.is_alive() and ended.is_set() and got == {"first": ("id0",), "rest": 49}
    with pytest.raises(StoreClosedError):
        store.get("id1")
    writer.close()
    assert _open_files(folder, "*") == 0
    assert not (folder / "store.sqlite3-wal").exists()   # the last connection removed it
    shutil.rmtree(folder)


def test_a_read_that_leaves_a_transaction_open_does_not_pass_it_to_the_next(open_store):
    store = open_store()
    _fill(store, n=3)
    with store._reading() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM items").fetchone()   # its snapshot: 3 items
    store.upsert([Item("new", unit(np.random.default_rng(9), 1)[0])])
    with store._reading() as conn:
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (4,)   # not the old snapshot's 3


def test_a_replicas_reads_after_its_writer_dropped_the_gallery_are_store_closed_in_every_thread(
        open_store, tmp_path, living_threads):
    folder = tmp_path / "s"
    writer = open_store(folder)
    _fill(writer)
    replica = open_store(folder, read_only=True)
    living_threads.each(lambda i: replica.get("id1"))   # connections opened before the drop, kept idle
    assert replica.get("id1").id == "id1"
    writer.close()
    shutil.rmtree(folder)
    errors = []

    def read(i):
        try:
            replica.get("id1")
        except StoreClosedError as exc:
            errors.append(exc)

    living_threads.each(read)
    read(-1)
    assert len(errors) == THREADS + 1   # none answered from the dropped database, whichever thread read
