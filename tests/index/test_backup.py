"""`simsearch index backup` / index.backup: a copy taken while another process keeps writing is the
store at one moment, and it opens and searches as a store of its own."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
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
    # nothing left: not even the DEST/index folder it made (a retry elsewhere leaves no litter behind)
    left = subprocess.run([*inside, "find", str(mount)], capture_output=True, text=True, check=True)
    assert left.stdout.split() == [str(mount), str(mount / "ballast")]


def test_a_backup_that_fails_at_its_second_gallery_leaves_dest_as_it_found_it(tmp_path, small_disk):
    """The default gallery fits the disk, the named one (12 MB) does not: the default's finished copy is
    not left behind either, in a DEST the backup made or in an empty one it was given."""
    mount, inside = small_disk
    data = tmp_path / "data"
    rng = np.random.default_rng(6)
    with Store.open(StoreConfig(data / "index", dim=DIM, model_id="m@0", snapshot_every=0)) as store:
        store.upsert([Item(f"d{i}", vector_for(i)) for i in range(20)])
    with Store.open(StoreConfig(data / "galleries" / "big" / "index", dim=DIM, model_id="m@0",
                                snapshot_every=0)) as store:
        store.upsert([Item(f"p{i}", vector_for(i), thumbnail=rng.bytes(12_000)) for i in range(1000)])
    for dest in (mount / "new" / "copy", mount / "empty"):
        subprocess.run([*inside, "mkdir", "-p", str(mount / "empty")], check=True)
        r = subprocess.run([*inside, SIMSEARCH, "index", "backup", str(dest), "--data", str(data)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
        assert "is full" in r.stderr and "nothing was left there" in r.stderr and r.stdout == "", r.stderr
        left = subprocess.run([*inside, "find", str(mount)], capture_output=True, text=True, check=True)
        assert sorted(left.stdout.split()) == [str(mount), str(mount / "ballast"), str(mount / "empty")]


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


def _gallery(data: Path, name: str, n: int, model_id: str = "m@0") -> None:
    folder = data / "index" if name == "default" else data / "galleries" / name / "index"
    with Store.open(StoreConfig(folder, dim=DIM, model_id=model_id, snapshot_every=0)) as store:
        store.upsert([Item(f"{name}-{i}", vector_for(i), label=name) for i in range(n)])


def _listing(data: Path) -> list[tuple]:
    r = _cli("galleries", "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    return [(g["name"], g["count"], g["model_id"]) for g in json.loads(r.stdout)]


def test_a_backup_holds_every_gallery_in_its_place_and_says_what_it_copied_of_each(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "bk"
    _gallery(data, "default", 3)
    _gallery(data, "shoes", 1)
    _gallery(data, "hats-2", 2, model_id="m@1")
    r = _cli("backup", str(dest), "--data", str(data))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("default: copied 3 items (model m@0, up to write 3, ") and \
        lines[0].endswith(f"to {dest / 'index'}"), lines
    assert lines[1].startswith("hats-2: copied 2 items (model m@1") and \
        lines[1].endswith(f"to {dest / 'galleries' / 'hats-2' / 'index'}"), lines
    assert lines[2].startswith("shoes: copied 1 item (model m@0") and "shoes" in lines[2].split(" to ")[-1], lines
    assert lines[3] == f"backed up 3 galleries (6 items) into {dest}; serve it with --data {dest}"
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "galleries/hats-2/index/store.sqlite3", "galleries/shoes/index/store.sqlite3", "index/store.sqlite3"]
    # laid out as DATA is: `index galleries` (and so `serve --data DEST`) sees the same galleries
    assert _listing(dest) == _listing(data) == [("default", 3, "m@0"), ("hats-2", 2, "m@1"), ("shoes", 1, "m@0")]
    with Store.open(StoreConfig(dest / "galleries" / "shoes" / "index", read_only=True)) as copy:
        assert copy.get("shoes-0").label == "shoes"

    # --gallery NAME: that one alone, in its own place, so that restoring it keeps its name
    r = _cli("backup", str(tmp_path / "one"), "--data", str(data), "--gallery", "shoes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("shoes: copied 1 item ") and "backed up 1 gallery (1 item)" in r.stdout
    assert _listing(tmp_path / "one") == [("shoes", 1, "m@0")]
    r = _cli("backup", str(tmp_path / "two"), "--data", str(data), "--gallery", "default")
    assert r.returncode == 0 and _listing(tmp_path / "two") == [("default", 3, "m@0")], r.stderr
    r = _cli("backup", str(tmp_path / "three"), "--data", str(data), "--gallery", "boots")
    assert r.returncode == 2 and "no store at" in r.stderr and not (tmp_path / "three").exists(), r.stderr


def test_a_backup_inside_the_live_galleries_folders_is_refused_in_one_line(tmp_path):
    data = tmp_path / "d"
    _gallery(data, "default", 2)
    _gallery(data, "shoes", 1)
    for dest in (data / "index" / "sub", data / "galleries" / "x", data / "galleries" / "shoes" / "bk", data,
                 tmp_path / "link" / "sub"):
        if dest.parent.name == "link":
            (tmp_path / "link").symlink_to(data / "index")   # the same folder by another path
        r = _cli("backup", str(dest), "--data", str(data))
        assert r.returncode == 2 and "Traceback" not in r.stderr, (dest, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and str(dest) in r.stderr, r.stderr
    assert not (data / "index" / "sub").exists() and not (data / "galleries" / "x").exists()
    assert not (data / "galleries" / "shoes" / "bk").exists()
    assert _listing(data) == [("default", 2, "m@0"), ("shoes", 1, "m@0")]
    # elsewhere in DATA (the container's /data/backups/DATE) is no folder of a gallery: allowed
    r = _cli("backup", str(data / "backups" / "monday"), "--data", str(data))
    assert r.returncode == 0 and _listing(data / "backups" / "monday") == _listing(data), r.stderr
    assert _listing(data) == [("default", 2, "m@0"), ("shoes", 1, "m@0")]


def test_what_an_interrupted_backup_left_does_not_block_the_retry(tmp_path):
    """A backup killed midway (no cleanup ran) left its staging folder alone in DEST: the retry removes it."""
    data, dest = tmp_path / "data", tmp_path / "bk"
    _gallery(data, "default", 2)
    _gallery(data, "shoes", 1)
    left = dest / ".simsearch-backup.part" / "galleries" / "shoes" / "index"
    left.mkdir(parents=True)
    (left / "store.sqlite3.part").write_bytes(b"half a page")
    (dest / ".simsearch-backup.part" / "index").mkdir()
    (dest / ".simsearch-backup.part" / "index" / "store.sqlite3").write_bytes(b"an older gallery")
    r = _cli("backup", str(dest), "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["galleries", "index"]
    assert _listing(dest) == [("default", 2, "m@0"), ("shoes", 1, "m@0")]


def test_a_gallery_deleted_before_its_copy_began_is_named_not_a_failure(tmp_path, monkeypatch):
    import index
    from index import _backup

    data = tmp_path / "data"
    _gallery(data, "default", 2)
    _gallery(data, "shoes", 1)
    monkeypatch.setattr(_backup, "gallery_names", lambda d: ["default", "gone", "shoes"])   # listed, then deleted
    copied = index.backup_galleries(data, tmp_path / "bk")
    assert [(c["gallery"], c.get("items"), c.get("deleted")) for c in copied] == \
        [("default", 2, None), ("gone", None, True), ("shoes", 1, None)]
    assert _listing(tmp_path / "bk") == [("default", 2, "m@0"), ("shoes", 1, "m@0")]
    assert not (tmp_path / "bk" / "galleries" / "gone").exists()


def test_a_backup_while_a_real_service_writes_to_two_galleries_holds_every_acknowledged_item(
        hybrid1_artifact, tmp_path):
    """A real `simsearch serve` takes writes to the default gallery and to `shoes` from two clients all
    the while: every item acknowledged before the backup began is in the copy of its gallery, nothing
    the service did not take is, the service keeps acknowledging, and the copy serves both galleries."""
    from tests.app.conftest import start_server, stop_server
    from tests.app.test_api import png

    key = {"X-API-Key": "backup-key"}
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": "backup-key"}
    live = start_server(env, tmp_path)
    acked: dict[str, list[str]] = {"default": [], "shoes": []}
    sent: dict[str, list[str]] = {"default": [], "shoes": []}
    errors: list[str] = []
    stop = threading.Event()

    def write(gallery: str) -> None:
        with httpx.Client(base_url=live.url, timeout=60, headers=key) as c:
            i = 0
            while not stop.is_set():
                id_ = f"{gallery}-{i}"
                sent[gallery].append(id_)
                r = c.post("/index", params={"gallery": gallery}, data={"id": id_},
                           files=[("file", ("x.png", png(i % 500 + (0 if gallery == "default" else 500)),
                                            "image/png"))])
                if r.status_code >= 300:
                    errors.append(f"{gallery} {id_}: {r.status_code} {r.text}")
                    return
                acked[gallery].append(id_)
                i += 1

    def wait_for(n: dict[str, int]) -> None:
        deadline = time.monotonic() + 120
        while any(len(acked[g]) < n[g] for g in n) and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        assert not errors and all(len(acked[g]) >= n[g] for g in n), (errors, {g: len(v) for g, v in acked.items()})

    threads = [threading.Thread(target=write, args=(g,), daemon=True) for g in acked]
    dest = tmp_path / "bk"
    try:
        for t in threads:
            t.start()
        wait_for({"default": 30, "shoes": 30})
        before = {g: list(v) for g, v in acked.items()}
        r = _cli("backup", str(dest), "--data", str(tmp_path / "data"))
        after = {g: len(v) for g, v in acked.items()}
        assert all(after[g] > len(before[g]) for g in after), (after, r.stderr)   # writes went on meanwhile
        wait_for({g: n + 5 for g, n in after.items()})   # the service kept taking writes
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        stop_server(live)
    assert r.returncode == 0, r.stderr
    assert not errors, errors
    assert "Traceback" not in live.log_tail(20_000), live.log_tail()
    counts = {}
    for gallery, folder in (("default", dest / "index"), ("shoes", dest / "galleries" / "shoes" / "index")):
        with Store.open(StoreConfig(folder, read_only=True)) as copy:
            ids = {it.id for it in copy.get_many(sent[gallery]) if it is not None}
            assert copy.count() == len(ids)
        assert set(before[gallery]) <= ids, (gallery, sorted(set(before[gallery]) - ids)[:5])
        assert ids <= set(sent[gallery])   # at most the writes in flight when it was copied besides
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"{gallery}: "))
        assert line.startswith(f"{gallery}: copied {len(ids)} items"), r.stdout
        counts[gallery] = len(ids)
    # the copy, served: both galleries, as the service held them
    served = start_server({**env, "SIMSEARCH_DATA_DIR": str(dest)}, tmp_path, log_name="restored.log")
    try:
        listed = httpx.get(served.url + "/galleries", timeout=30).json()
    finally:
        stop_server(served)
    assert {g["name"]: g["count"] for g in listed["galleries"]} == counts, listed
