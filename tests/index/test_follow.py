"""A read-only Store follows another process's writes with refresh(): additions, replacements,
deletions and label and metadata edits, with searches, filters, counts and the listing equal to the
writer's afterwards."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item, Store, StoreError

from .conftest import DIM, unit


def _same_view(reader, writer, queries: np.ndarray) -> None:
    assert reader.count() == writer.count()
    assert [it.id for it in reader.list(limit=1000)] == [it.id for it in writer.list(limit=1000)]
    for kw in ({}, {"label": "b"}, {"where": {"n": {"$gte": 5}}}, {"where": {"tag": "x"}}):
        got = [[h.id for h in hits] for hits in reader.search(queries, k=5, **kw)]
        want = [[h.id for h in hits] for hits in writer.search(queries, k=5, **kw)]
        assert got == want, kw


@pytest.mark.parametrize("kind", ["flat", "hnsw"])   # hnsw cannot remove: deletions are hidden
def test_a_read_only_store_follows_another_writers_changes_on_refresh(open_store, tmp_path, kind):
    rng = np.random.default_rng(5)
    vectors = unit(rng, 40)
    writer = open_store(index=kind)
    writer.upsert([Item(f"i{k}", vectors[k], "ab"[k % 2], {"n": k}) for k in range(20)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    queries = np.concatenate([vectors[:3], unit(rng, 4)])
    # filters used before the changes, so that their indexes are kept up to date, not built afresh
    reader.search(queries, k=3, where={"n": 1}), reader.search(queries, k=3, where={"tag": "x"})
    assert reader.refresh() == (0, 0, 0)

    writer.upsert([Item(f"i{k}", vectors[k], "b", {"n": k, "tag": "x"}) for k in range(20, 30)])   # added
    writer.upsert([Item("i3", vectors[30], "a", {"n": 3})])                                        # replaced
    writer.delete(["i4", "i5"])
    writer.update("i6", label="b", metadata_patch={"tag": "x"})                                    # edited
    writer.update("i7", metadata_patch={"n": None})
    assert reader.count() == 20 and reader.search(vectors[4], k=1)[0][0].id == "i4"   # not yet

    assert reader.refresh() == (11, 3, 2)   # 10 new + i3's new version; i3's old, i4, i5; i6, i7
    _same_view(reader, writer, np.concatenate([queries, vectors[[3, 30, 25]]]))
    assert reader.search(vectors[30], k=1)[0][0].id == "i3"
    assert all(h.id not in ("i4", "i5") for hits in reader.search(vectors[:8], k=30) for h in hits)
    assert reader.get("i6").label == "b" and reader.get("i7").metadata == {}
    assert reader.refresh() == (0, 0, 0)

    writer.delete_where(label="b")
    assert reader.refresh() == (0, 19, 0)   # every "b": i1, the odd ones from i7, i6, i20-i29
    _same_view(reader, writer, queries)


def test_refresh_is_for_a_read_only_store(open_store):
    with pytest.raises(StoreError, match="open for writing"):
        open_store().refresh()


def test_a_read_only_store_not_created_yet_is_missing_not_corrupt(tmp_path):
    import sqlite3

    from index import Store, StoreConfig, StoreMissingError

    folder = tmp_path / "store"
    with pytest.raises(StoreMissingError, match="is missing"):
        Store.open(StoreConfig(folder, read_only=True))
    folder.mkdir()
    sqlite3.connect(folder / "store.sqlite3").execute("PRAGMA journal_mode=WAL").fetchone()  # a writer, mid-way
    with pytest.raises(StoreMissingError, match="no tables yet"):
        Store.open(StoreConfig(folder, read_only=True))


def test_edits_of_a_writer_that_does_not_count_them_are_still_followed(open_store, tmp_path):
    import sqlite3

    rng = np.random.default_rng(6)
    writer = open_store()
    writer.upsert([Item(f"i{k}", v, "a", {"n": k}) for k, v in enumerate(unit(rng, 5))])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    assert reader.refresh() == (0, 0, 0)
    # an older writer: no edit counter in the store, and a label changed in place
    with sqlite3.connect(tmp_path / "store" / "store.sqlite3") as db:
        db.execute("DELETE FROM meta WHERE key = 'edits'")
        db.execute("UPDATE items SET label = 'b' WHERE id = 'i2'")
    assert reader.refresh() == (0, 0, 1)
    assert reader.get("i2").label == "b" and [h.id for h in reader.search(unit(rng, 1), k=5, label="b")[0]] == ["i2"]


def test_a_store_from_before_the_edit_count_starts_counting_when_opened_for_writing(tmp_path):
    import sqlite3

    from index import Store, StoreConfig

    folder = tmp_path / "store"
    Store.open(StoreConfig(folder, dim=8, model_id="m")).close()
    with sqlite3.connect(folder / "store.sqlite3") as db:   # as an older version wrote it
        db.execute("DELETE FROM meta WHERE key = 'edits'")
    Store.open(StoreConfig(folder, read_only=True)).close()   # a reader writes nothing
    with sqlite3.connect(folder / "store.sqlite3") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'edits'").fetchone() is None
    with Store.open(StoreConfig(folder, dim=8, model_id="m")) as writer:
        writer.upsert([Item("a", np.eye(8, dtype=np.float32)[0], None, {})])
        writer.update("a", label="x")
    with sqlite3.connect(folder / "store.sqlite3") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'edits'").fetchone() == ("1",)


def test_a_store_on_a_disk_with_no_byte_free_is_refused_as_full_not_as_damaged(small_disk):
    import subprocess
    import sys

    mount, inside = small_disk
    folder = mount / "store"
    make = ("import sys, pathlib, numpy as np; from index import Store, StoreConfig, Item\n"
            "s = Store.open(StoreConfig(pathlib.Path(sys.argv[1]), dim=8, model_id='m'))\n"
            "s.upsert([Item('a', np.eye(8, dtype=np.float32)[0], None, {})]); s.close()")
    assert subprocess.run([*inside, sys.executable, "-c", make, str(folder)], timeout=120).returncode == 0
    subprocess.run([*inside, "sh", "-c", f"cat /dev/zero > {mount}/fill"], capture_output=True)   # to the last byte
    reopen = ("import sys, pathlib; from index import Store, StoreConfig, StorageError\n"
              "try:\n    Store.open(StoreConfig(pathlib.Path(sys.argv[1]), dim=8, model_id='m')).close(); print('opened')\n"
              "except StorageError as exc:\n    print('StorageError', exc.full, exc)")
    r = subprocess.run([*inside, sys.executable, "-c", reopen, str(folder)], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("StorageError True") and "is full" in r.stdout, r.stdout + r.stderr
    assert "restore it from a backup" not in r.stdout
    subprocess.run([*inside, "rm", str(mount / "fill")], check=True)
    r = subprocess.run([*inside, sys.executable, "-c", reopen, str(folder)], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "opened", r.stdout + r.stderr


def _statements(reader) -> list[str]:
    """The SQL the follower's connection runs from now on (it exists after a first refresh)."""
    seen: list[str] = []
    reader._follow_conn.set_trace_callback(seen.append)
    return seen


def _reads_listing(statements: list[str]) -> bool:
    return any(s.startswith("SELECT seq") and "FROM items" in s and "WHERE" not in s for s in statements)


def test_a_follower_applies_deletions_and_edits_from_the_change_log_without_reading_the_listing(
        open_store, tmp_path):
    rng = np.random.default_rng(7)
    vectors = unit(rng, 30)
    writer = open_store()
    writer.upsert([Item(f"i{k}", vectors[k], "ab"[k % 2], {"n": k}) for k in range(20)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    assert reader.refresh() == (0, 0, 0)
    sql = _statements(reader)

    writer.delete(["i1", "i2"])
    writer.update("i3", label="c")
    writer.update("i3", metadata_patch={"tag": "x"})           # twice: one change
    writer.upsert([Item("i4", vectors[20], "a", {"n": 4})])   # replaced: its old row logged (items_replaced_log)
    writer.upsert([Item("new", vectors[21], "b", {})])
    writer.update("new", label="c")                             # added and edited since the last look
    writer.delete(["i5"])
    writer.upsert([Item("i5", vectors[22], "b", {})])           # deleted, then added again
    writer.update("i6", label="a")                              # an edit that changes nothing
    assert reader.refresh() == (3, 4, 1)   # new, i4, i5 / i1, i2, i4's and i5's old rows / i3
    assert not _reads_listing(sql) and any("FROM changes" in s for s in sql)
    _same_view(reader, writer, np.concatenate([vectors[:8], vectors[20:23]]))
    assert reader.get("i3").label == "c" and reader.get("i3").metadata == {"n": 3, "tag": "x"}
    assert reader.get("new").label == "c" and reader.get("i1") is None

    writer.delete_where(label="c")
    assert reader.refresh() == (0, 2, 0)
    assert not _reads_listing(sql)
    _same_view(reader, writer, vectors[:8])


def test_a_follower_further_behind_than_the_kept_log_compares_the_listing(open_store, tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "CHANGES_KEPT", 2)
    rng = np.random.default_rng(8)
    vectors = unit(rng, 20)
    writer = open_store()
    writer.upsert([Item(f"i{k}", vectors[k], "a", {"n": k}) for k in range(20)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    assert reader.refresh() == (0, 0, 0)
    sql = _statements(reader)
    for k in range(6):   # six log entries: the first ones are pruned
        writer.update(f"i{k}", label="b")
    writer.delete(["i10"])
    assert reader.refresh() == (0, 1, 6)
    assert _reads_listing(sql)
    _same_view(reader, writer, vectors[:12])
    del sql[:]
    writer.update("i11", label="b")   # caught up again: back to the log
    assert reader.refresh() == (0, 0, 1) and not _reads_listing(sql)
    _same_view(reader, writer, vectors[:12])


def test_a_store_from_before_the_change_log_is_followed_by_listing_until_a_writer_adds_it(tmp_path):
    import sqlite3

    from index import Store, StoreConfig

    folder = tmp_path / "store"
    rng = np.random.default_rng(9)
    vectors = unit(rng, 10)
    with Store.open(StoreConfig(folder, dim=DIM, model_id="m", snapshot_every=0)) as writer:
        writer.upsert([Item(f"i{k}", vectors[k], "a", {}) for k in range(10)])
    with sqlite3.connect(folder / "store.sqlite3") as db:   # as an older version left it
        db.executescript("DROP TRIGGER items_deleted_log; DROP TRIGGER items_edited_log; DROP TABLE changes;")
    with Store.open(StoreConfig(folder, read_only=True)) as reader:
        assert reader.refresh() == (0, 0, 0)
        with sqlite3.connect(folder / "store.sqlite3") as db:   # an older writer: an edit (counted) and a deletion
            db.execute("UPDATE items SET label = 'b' WHERE id = 'i1'")
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'edits'")
            db.execute("DELETE FROM items WHERE id = 'i2'")
        assert reader.refresh() == (0, 1, 1)
        assert reader.get("i1").label == "b" and reader.get("i2") is None
        with Store.open(StoreConfig(folder, dim=DIM, model_id="m", snapshot_every=0)) as writer:   # adds the log
            writer.update("i3", label="b")
            assert reader.refresh() == (0, 0, 1)   # listing compared once more: the log starts now
            sql = _statements(reader)
            writer.delete(["i4"])
            writer.update("i5", label="b")
            assert reader.refresh() == (0, 1, 1) and not _reads_listing(sql)
            assert reader.count(label="b") == writer.count(label="b") == 3


def test_a_store_from_before_the_change_log_still_opens_on_a_full_disk_and_gets_it_when_there_is_room(small_disk):
    import subprocess
    import sys

    mount, inside = small_disk
    script = (
        "import sys, pathlib, sqlite3, subprocess, numpy as np\n"
        "from index import Store, StoreConfig, Item\n"
        "folder = pathlib.Path(sys.argv[1]); config = StoreConfig(folder, dim=8, model_id='m')\n"
        "with Store.open(config) as s: s.upsert([Item('a', np.eye(8, dtype=np.float32)[0], None, {})])\n"
        "db = sqlite3.connect(folder / 'store.sqlite3')   # kept open, as a reader would: the WAL stays\n"
        "db.executescript('DROP TRIGGER items_deleted_log; DROP TRIGGER items_edited_log; DROP TABLE changes;')\n"
        "has_log = lambda: db.execute(\"SELECT count(*) FROM sqlite_master WHERE name = 'changes'\").fetchone()[0]\n"
        "subprocess.run(['sh', '-c', f'cat /dev/zero > {folder.parent}/fill'], capture_output=True)\n"
        "with Store.open(config) as s: print('full', s.count(), has_log())\n"
        "(folder.parent / 'fill').unlink()\n"
        "with Store.open(config) as s: print('room', s.count(), has_log())\n")
    r = subprocess.run([*inside, sys.executable, "-c", script, str(mount / "store")],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.split("\n")[:2] == ["full 1 0", "room 1 1"], r.stdout + r.stderr


def test_a_change_log_made_anew_under_a_follower_is_not_read_from_where_the_old_one_was(tmp_path):
    import sqlite3

    from index import Store, StoreConfig

    folder = tmp_path / "store"
    config = StoreConfig(folder, dim=DIM, model_id="m", snapshot_every=0)
    rng = np.random.default_rng(10)
    with Store.open(config) as writer:
        writer.upsert([Item(f"i{k}", v, "a", {}) for k, v in enumerate(unit(rng, 10))])
        for k in range(3):
            writer.update(f"i{k}", label="b")   # log entries 1-3
    with Store.open(StoreConfig(folder, read_only=True)) as reader:   # has read up to entry 3
        with sqlite3.connect(folder / "store.sqlite3") as db:
            db.executescript("DROP TRIGGER items_deleted_log; DROP TRIGGER items_edited_log; DROP TABLE changes;")
        with Store.open(config) as writer:   # adds the log again: it counts from 1
            writer.update("i5", label="b")
            writer.delete(["i6"])
            assert reader.refresh() == (0, 1, 1)
            assert reader.count(label="b") == writer.count(label="b") == 4 and reader.get("i6") is None


def test_a_lost_change_log_trigger_is_named_by_check_and_restored_by_the_next_writer(tmp_path):
    import sqlite3

    from index import Store, StoreConfig, StoreReader

    folder = tmp_path / "store"
    config = StoreConfig(folder, dim=DIM, model_id="m", snapshot_every=0)
    with Store.open(config) as writer:
        writer.upsert([Item(f"i{k}", v, "a", {}) for k, v in enumerate(unit(np.random.default_rng(11), 4))])
    with sqlite3.connect(folder / "store.sqlite3") as db:
        db.execute("DROP TRIGGER items_deleted_log")
    with StoreReader(folder) as reader:
        found = reader.check()
    assert not found.ok and any("items_deleted_log" in p and "would miss deletions" in p for p in found.problems)
    with Store.open(StoreConfig(folder, read_only=True)) as follower:
        with Store.open(config) as writer:   # restores the trigger
            writer.delete(["i1"])
        assert follower.refresh() == (0, 1, 0)
    with StoreReader(folder) as reader:
        assert reader.check().ok


def test_an_hnsw_replica_compacts_the_vectors_it_hides_as_the_writer_does(open_store, tmp_path):
    rng = np.random.default_rng(12)
    vectors = unit(rng, 600)
    writer = open_store(index="hnsw")
    writer.upsert([Item(f"i{k}", vectors[k], "ab"[k % 2], {"n": k}) for k in range(600)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    writer.delete([f"i{k}" for k in range(100)])   # under the compaction threshold (256): hidden
    assert reader.refresh() == (0, 100, 0) and reader.info()["removed_pending"] == 100
    writer.delete([f"i{k}" for k in range(100, 400)])   # 400 hidden: due, as it is for the writer
    assert reader.refresh() == (0, 300, 0)
    assert reader.info()["removed_pending"] == writer.info()["removed_pending"] == 0
    _same_view(reader, writer, vectors[::37])


def test_an_ivf_replica_opened_while_the_gallery_was_small_trains_when_it_grows(open_store, tmp_path):
    rng = np.random.default_rng(13)
    vectors = unit(rng, 400)
    writer = open_store(index="ivf", train_threshold=300)
    writer.upsert([Item(f"i{k}", vectors[k], None, {}) for k in range(100)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None, train_threshold=300)
    assert reader.info()["exact"]
    writer.upsert([Item(f"i{k}", vectors[k], None, {}) for k in range(100, 400)])
    assert not writer.info()["exact"]
    assert reader.refresh() == (300, 0, 0)
    assert not reader.info()["exact"] and reader.count() == 400
    hits = reader.search(vectors[:20], k=1)
    assert sum(h[0].id == f"i{k}" for k, h in enumerate(hits)) >= 18   # approximate, but finds itself


def test_a_replica_reaches_the_writers_position_exactly_when_it_has_applied_that_write(open_store, tmp_path):
    rng = np.random.default_rng(8)
    vectors = unit(rng, 8)
    writer = open_store()
    writer.upsert([Item(f"i{k}", vectors[k], None, {}) for k in range(3)])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    assert reader.position() == writer.position() == "3.0"   # opened after the writes: it holds them
    for write in (lambda: writer.upsert([Item("i3", vectors[3], None, {})]),   # each kind of write moves it
                  lambda: writer.delete(["i0"]),
                  lambda: writer.update("i1", label="edited"),
                  lambda: writer.upsert([Item("i1", vectors[4], "edited", {})]),
                  lambda: writer.delete_where(label="edited")):
        before = writer.position()
        write()
        token = writer.position()
        assert token != before and writer.reaches(token) and writer.reaches(before)
        assert not reader.reaches(token) and reader.reaches(before)   # the replica has not looked yet
        reader.refresh()
        assert reader.reaches(token) and reader.position() == token
        assert not writer.reaches(f"{int(token.split('.')[0]) + 1}.0")   # a position it never had
    assert [h.id for h in reader.search(vectors[3], k=5)[0]] == ["i3", "i2"]   # i0 deleted, i1 edited then deleted


def test_a_write_that_leaves_nothing_to_apply_still_moves_the_replicas_position(open_store, tmp_path):
    rng = np.random.default_rng(9)
    writer = open_store()
    writer.upsert([Item("a", unit(rng, 1)[0], None, {})])
    reader = open_store(path=tmp_path / "store", read_only=True, model_id=None, dim=None)
    writer.upsert([Item("b", unit(rng, 1)[0], None, {})])   # added and deleted between two looks
    writer.delete(["b"])
    writer.update("a", label=None)                            # an edit that changes nothing
    assert reader.refresh() == (0, 0, 0)
    assert reader.position() == writer.position() == "3.1" and reader.reaches(writer.position())


@pytest.mark.parametrize("token", ["", "3", "3.", ".1", "a.b", "-1.0", "1.2.3", "１.0", "1" * 20 + ".0", None])
def test_a_malformed_position_is_refused_with_the_value(open_store, token):
    from index import InvalidItemError

    with pytest.raises(InvalidItemError, match="two whole numbers joined by a dot"):
        open_store().reaches(token)
