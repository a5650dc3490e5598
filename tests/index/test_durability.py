"""Durability: kill -9 of a writer loses nothing acknowledged; snapshot + replay; corrupt or
truncated snapshot and journal are logged and recovered from what is intact."""
from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import Item, Store, StoreConfig, StoreCorruptError

from ._writer import DIM, MODEL_ID, vector_for

REPO = Path(__file__).resolve().parents[2]


def _run_writer_and_kill(path: Path, n_before_kill: int, *args: str) -> list[str]:
    """Start the writer, SIGKILL it after n_before_kill acknowledgements (it is still writing),
    and return every id it acknowledged (printed after upsert returned)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.index._writer", str(path), "100000", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        while len(acked) < n_before_kill:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read()}"
            if line.startswith("item-"):
                acked.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # read() through the same buffered reader: communicate() reads the raw pipe and would miss the
        # lines readline() had already buffered (acknowledged items the test then counted as extra)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Whatever it printed before it died was acknowledged too.
    acked += [ln for ln in rest.splitlines() if ln.startswith("item-")]
    return acked


def _assert_all_present(store: Store, acked: list[str], metadata: bool = True) -> None:
    for id_ in acked:
        i = int(id_.split("-")[1])
        item = store.get(id_)
        assert item is not None, f"acknowledged {id_} lost"
        np.testing.assert_allclose(item.vector, vector_for(i), rtol=1e-6)
        assert item.metadata == ({"i": i} if metadata else {})
    # ... and the recovered FAISS index finds each of them as its own nearest neighbour.
    vecs = np.stack([vector_for(int(i.split("-")[1])) for i in acked])
    hits = store.search(vecs, k=1)
    assert [h[0].id for h in hits] == acked


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_sigkill_during_a_stream_of_adds_loses_no_acknowledged_item(tmp_path, kind):
    path = tmp_path / "store"
    acked = _run_writer_and_kill(path, 150, "--index", kind)
    assert len(acked) >= 150
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL_ID)) as store:
        assert store.count() >= len(acked)  # plus at most the one in flight
        assert store.count() <= len(acked) + 1
        _assert_all_present(store, acked)


def test_sigkill_after_a_snapshot_recovers_snapshot_plus_later_writes(tmp_path, caplog):
    path = tmp_path / "store"
    acked = _run_writer_and_kill(path, 120, "--snapshot-at", "59", "--index", "ivf")
    assert (path / "index.snapshot").exists()
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL_ID, train_threshold=200)) as store:
        _assert_all_present(store, acked)
        assert store.info()["snapshot_seq"] == 60
    assert "loaded snapshot at seq 60" in caplog.text


def test_restart_replays_deletes_and_replacements_made_after_the_snapshot(tmp_path):
    path = tmp_path / "store"
    cfg = StoreConfig(path, dim=DIM, model_id=MODEL_ID, index="hnsw", snapshot_every=0)
    store = Store.open(cfg)
    store.upsert([Item(f"item-{i}", vector_for(i)) for i in range(50)])
    store.snapshot()
    store.delete(["item-1"])
    store.upsert([Item("item-2", vector_for(1000), label="replaced")])
    store._release()  # drop it like a crash: no close(), no snapshot
    with Store.open(cfg) as again:
        assert again.count() == 49 and again.get("item-1") is None
        assert all(h.id != "item-1" for h in again.search(vector_for(1), k=5)[0])
        top = again.search(vector_for(1000), k=1)[0][0]
        assert (top.id, top.label) == ("item-2", "replaced")
        assert all(h.id != "item-2" for h in again.search(vector_for(2), k=5)[0])


def _store_with_snapshot(path: Path, n: int = 40) -> StoreConfig:
    cfg = StoreConfig(path, dim=DIM, model_id=MODEL_ID, snapshot_every=0)
    with Store.open(cfg) as store:
        store.upsert([Item(f"item-{i}", vector_for(i)) for i in range(n)])
    assert (path / "index.snapshot").exists()
    return cfg


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_snapshot_is_logged_set_aside_and_rebuilt_from_the_record(tmp_path, caplog, damage):
    path = tmp_path / "store"
    cfg = _store_with_snapshot(path)
    snap = path / "index.snapshot"
    data = bytearray(snap.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) - 100] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a snapshot at all" * 10)
    snap.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(cfg) as store:
        assert store.count() == 40
        _assert_all_present(store, [f"item-{i}" for i in range(40)], metadata=False)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "snapshot" in errors[0].getMessage() and "rebuilding" in errors[0].getMessage()
    assert list(path.glob("index.snapshot.bad-*")), "the damaged snapshot is kept aside"
    # The next start is clean: no crash loop, no repeated error.
    caplog.clear()
    with Store.open(cfg) as store:
        assert store.count() == 40
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_snapshot_newer_than_the_record_is_reported_as_lost_writes(tmp_path, caplog):
    path = tmp_path / "store"
    cfg = _store_with_snapshot(path)
    old_db = (path / "store.sqlite3").read_bytes()
    with Store.open(cfg) as store:
        store.upsert([Item("late", vector_for(999))])
    (path / "store.sqlite3").write_bytes(old_db)  # the record of truth rolled back
    for extra in ("store.sqlite3-wal", "store.sqlite3-shm"):
        (path / extra).unlink(missing_ok=True)
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(cfg) as store:
        assert store.count() == 40 and store.get("late") is None
    assert "lost acknowledged writes" in caplog.text


def test_unreadable_database_gives_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    (path / "store.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    for _ in range(2):  # the same clear error every time, no half-initialised state
        with pytest.raises(StoreCorruptError, match=r"store\.sqlite3.*not a database"):
            Store.open(StoreConfig(path, dim=DIM, model_id=MODEL_ID))


def test_truncated_journal_is_logged_and_the_intact_commits_recovered(tmp_path, caplog):
    path = tmp_path / "store"
    acked = _run_writer_and_kill(path, 60)
    wal = path / "store.sqlite3-wal"
    data = wal.read_bytes()
    page = struct.unpack(">I", data[8:12])[0]
    frame = 24 + page
    commit_ends = [off + frame for off in range(32, len(data) - frame + 1, frame)
                   if struct.unpack(">I", data[off + 4:off + 8])[0]]
    assert len(commit_ends) > 10, "the killed writer left its commits in the WAL"
    # Cut the journal in the middle of the commit frame three transactions from the end: at
    # most one transaction after it can be unacknowledged (the one in flight at the kill), so
    # acknowledged writes are cut off.
    with open(wal, "r+b") as f:
        f.truncate(commit_ends[-3] - frame // 2)
    caplog.set_level(logging.INFO, logger="index")
    with Store.open(StoreConfig(path, dim=DIM, model_id=MODEL_ID)) as store:
        present = [i for i in acked if store.get(i) is not None]
        # What survives is an unbroken prefix of the acknowledged stream, all of it searchable.
        assert 0 < len(present) < len(acked) and present == acked[: len(present)]
        _assert_all_present(store, present)
    assert "partial frame" in caplog.text and "journal" in caplog.text


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_index_loaded_from_its_snapshot_grows_shrinks_and_searches_exactly(tmp_path, kind):
    # make_room at open leaves spare capacity behind the loaded arrays: writes must land in it exactly
    path = tmp_path / "store"
    cfg = StoreConfig(path, dim=DIM, model_id=MODEL_ID, index=kind, snapshot_every=0)
    with Store.open(cfg) as store:
        store.upsert([Item(f"item-{i}", vector_for(i)) for i in range(40)])
    assert (path / "index.snapshot").exists()   # written at close, read at the next open
    with Store.open(cfg) as store:
        store.upsert([Item(f"item-{i}", vector_for(i)) for i in range(40, 60)])
        store.delete([f"item-{i}" for i in range(0, 60, 3)])
        store.upsert([Item("item-1", vector_for(500))])
        live = {f"item-{i}": vector_for(i) for i in range(60) if i % 3}
        live["item-1"] = vector_for(500)
        ids = sorted(live)
        matrix = np.stack([live[i] for i in ids])
        for q in (vector_for(7), vector_for(500), vector_for(59), vector_for(999)):
            want = [ids[j] for j in np.argsort(-(matrix @ q), kind="stable")[:5]]
            assert [h.id for h in store.search(q, k=5)[0]] == want
        assert store.count() == len(live)
