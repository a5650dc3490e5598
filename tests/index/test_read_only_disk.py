"""A store on a read-only disk (a backup on read-only media, a volume mounted :ro) is read, checked and
copied by the read-only tools, and a write-ahead log that cannot be read there is named as the reason,
not reported as damage. The disk is a real tmpfs in a user and mount namespace of the test's own,
remounted read-only (tests/conftest.py's private_disk); the tools run inside it (`nsenter`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from index import StoreReader

# A store of 20 items (or `N` more in a store that exists), written in a process of its own, closed
# cleanly, or killed (-9) with its write-ahead log not yet folded into the database file.
_WRITE = """
import os, sys, pathlib, numpy as np
from index import Store, StoreConfig, Item
path, first, n, kill = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "kill"
s = Store.open(StoreConfig(path, dim=8, model_id="m", snapshot_every=0))
s.upsert([Item(f"i{k}", np.eye(8, dtype=np.float32)[k % 8], None, {"k": k}) for k in range(first, first + n)])
if kill:
    os.kill(os.getpid(), 9)
s.close()
"""


def _run(inside: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*inside, *args], capture_output=True, text=True, timeout=120)


def _simsearch(inside: list[str], *args: str) -> subprocess.CompletedProcess:
    return _run(inside, sys.executable, "-m", "cli", *args)


def _remount(inside: list[str], mount: Path, mode: str) -> None:
    r = _run(inside, "mount", "-o", f"remount,{mode}", str(mount))
    assert r.returncode == 0, r.stderr


def test_a_cleanly_closed_store_on_a_read_only_disk_is_checked_listed_and_backed_up(private_disk, tmp_path):
    mount, inside = private_disk
    store = mount / "data" / "index"
    assert _run(inside, sys.executable, "-c", _WRITE, str(store), "0", "20", "close").returncode == 0
    _remount(inside, mount, "ro")
    assert _run(inside, "touch", str(mount / "x")).returncode != 0   # the disk is read-only indeed

    r = _simsearch(inside, "index", "check", "--data", str(mount / "data"))
    assert r.returncode == 0, r.stderr
    assert "ok: checked 20 items" in r.stdout
    listing = _run(inside, sys.executable, "-c", "import sys; from index import StoreReader; "
                   "print(len(StoreReader(sys.argv[1]).rows()[1]))", str(store))
    assert listing.stdout.strip() == "20", listing.stderr
    r = _simsearch(inside, "index", "backup", "--data", str(mount / "data"), str(tmp_path / "copy"))
    assert r.returncode == 0, r.stderr
    with StoreReader(tmp_path / "copy" / "index") as copy:   # read outside the namespace
        (last_seq, rows), check = copy.rows(), copy.check()
    assert len(rows) == 20 and last_seq == 20 and check.ok, check.problems


def test_a_write_ahead_log_on_a_read_only_disk_is_read_or_named_as_the_reason(private_disk):
    mount, inside = private_disk
    store = mount / "data" / "index"
    assert _run(inside, sys.executable, "-c", _WRITE, str(store), "0", "20", "close").returncode == 0
    killed = _run(inside, sys.executable, "-c", _WRITE, str(store), "20", "10", "kill")
    assert killed.returncode == -9, killed.stderr
    assert _run(inside, "test", "-s", f"{store}/store.sqlite3-wal").returncode == 0
    _remount(inside, mount, "ro")

    # with the writer's -shm file beside it, SQLite reads the log: the 10 unfolded writes are there
    r = _simsearch(inside, "index", "check", "--data", str(mount / "data"))
    assert r.returncode == 0 and "ok: checked 30 items" in r.stdout, r.stdout + r.stderr

    # without it, the log cannot be read on that disk: the error says so, not "damaged"
    _remount(inside, mount, "rw")
    assert _run(inside, "rm", f"{store}/store.sqlite3-shm").returncode == 0
    _remount(inside, mount, "ro")
    r = _simsearch(inside, "index", "check", "--data", str(mount / "data"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert "read-only disk" in err and "store.sqlite3-wal" in err and "Copy the folder to a writable disk" in err
    assert "restore it from a backup" not in err and "Traceback" not in r.stderr
