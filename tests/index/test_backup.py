"""`simsearch index backup` / index.backup: a copy taken while another process keeps writing is the
store at one moment, and it opens and searches as a store of its own."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from index import Item, Store, StoreConfig

from ._writer import DIM, vector_for

SIMSEARCH = str(Path(sys.executable).parent / "simsearch")
REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SIMSEARCH, "index", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_a_backup_taken_during_writes_is_one_moment_of_the_store_and_serves_on_its_own(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "copy"
    writer = subprocess.Popen([sys.executable, "-m", "tests.index._writer", str(data / "index"), "100000"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    acked: list[str] = []
    try:
        assert writer.stdout.readline().strip() == "ready"
        while len(acked) < 150:
            acked.append(writer.stdout.readline().strip())
        before = len(acked)
        r = _cli("backup", str(dest), "--data", str(data))  # the writer holds the store's lock meanwhile
        assert r.returncode == 0, r.stderr
        assert writer.poll() is None, "the writer kept writing during the backup"
    finally:
        writer.kill()
        acked += writer.stdout.read().split()  # everything it acknowledged, up to the kill
        writer.wait(10)
    copy = Store.open(StoreConfig(dest / "index", snapshot_every=0))
    try:
        n = copy.count()
        # one moment: exactly the first n writes; at least those acknowledged before the copy began
        # (and one write may be committed but not yet acknowledged when the writer was killed)
        assert before <= n <= len(acked) + 1
        items = copy.get_many([f"item-{i}" for i in range(n + 1)])
        assert items[n] is None and all(it is not None for it in items[:n])
        for i in (0, n // 2, n - 1):
            assert np.allclose(items[i].vector, vector_for(i), atol=1e-6) and items[i].metadata == {"i": i}
        # the derived FAISS index is rebuilt from the copied record: searches work on the copy
        assert copy.search(vector_for(n // 2), k=1)[0][0].id == f"item-{n // 2}"
    finally:
        copy.close()
    assert f"copied {n} items" in r.stdout and f"--data {dest}" in r.stdout


def test_a_backup_into_a_folder_in_use_or_from_no_store_is_one_clear_line(tmp_path):
    (tmp_path / "busy" / "index").mkdir(parents=True)
    (tmp_path / "busy" / "index" / "keep.txt").write_text("x")
    data = tmp_path / "my photos #2?"  # read through an SQLite URI: these must not cut the path
    store = Store.open(StoreConfig(data / "index", dim=4, model_id="m@0", snapshot_every=0))
    store.close()
    r = _cli("backup", str(tmp_path / "busy"), "--data", str(data))
    assert r.returncode == 2 and "is not an empty folder" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "busy" / "index" / "keep.txt").read_text() == "x"
    r = _cli("backup", str(tmp_path / "new"), "--data", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no store at" in r.stderr and "Traceback" not in r.stderr
    r = _cli("backup", str(tmp_path / "copy #3"), "--data", str(data))
    assert r.returncode == 0 and "copied 0 items (model m@0" in r.stdout, r.stderr
    assert f"serve it with --data '{tmp_path / 'copy #3'}'" in r.stdout   # quoted, so that it pastes into a shell
    for path in (data, tmp_path / "copy #3"):
        copy = Store.open(StoreConfig(path / "index", read_only=True))
        assert copy.model_id == "m@0"
        copy.close()


def test_a_backup_onto_a_full_disk_is_one_clear_line_and_leaves_nothing_behind(tmp_path, small_disk):
    """A real full disk (tests/conftest.py's small_disk, 8 MB free): a 12 MB store does not fit."""
    from index import Item

    mount, inside = small_disk
    data = tmp_path / "data"
    rng = np.random.default_rng(5)
    with Store.open(StoreConfig(data / "index", dim=DIM, model_id="m@0", snapshot_every=0)) as store:
        store.upsert([Item(f"p{i}", vector_for(i), thumbnail=rng.bytes(12_000)) for i in range(1000)])
    r = subprocess.run([*inside, SIMSEARCH, "index", "backup", str(mount / "copy"), "--data", str(data)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "is full" in r.stderr and "the copy needs about 12" in r.stderr, r.stderr
    left = subprocess.run([*inside, "find", str(mount / "copy")], capture_output=True, text=True, check=True)
    assert left.stdout.split() == [str(mount / "copy"), str(mount / "copy" / "index")]


def test_a_backup_folder_holds_the_copied_store_alone_with_no_leftover_part_files(tmp_path, capsys):
    from cli import main

    with Store.open(StoreConfig(tmp_path / "data" / "index", dim=DIM, model_id="test-model@000000000000",
                                snapshot_every=0)) as store:
        store.upsert([Item(f"item-{i}", vector_for(i)) for i in range(5)])
    assert main(["index", "backup", str(tmp_path / "bk 1"), "--data", str(tmp_path / "data")]) == 0
    assert "copied 5 items" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "bk 1").rglob("*")) == ["index", "store.sqlite3"]
    with Store.open(StoreConfig(tmp_path / "bk 1" / "index", read_only=True)) as copy:
        assert copy.count() == 5
