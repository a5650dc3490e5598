"""Store.backup copies a gallery through the open store's own connection, so that closing the store (a gallery
dropped, or replaced by a restore) waits for a copy under way, which then holds every item. The service copied
by the folder's path before, and a drop meanwhile pulled the files from under the copy (503s on a writer, and
500s before those were mapped: fifty-second session)."""
from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from index import Item, Store, StoreClosedError, StoreConfig, StoreReader

DIM = 256
N = 12_000   # about 40 MB with thumbnails: a copy of it takes long enough to begin a close under it


def _filled(path) -> Store:
    store = Store.open(StoreConfig(path=path, dim=DIM, model_id="m@1", snapshot_every=0))
    rng = np.random.default_rng(0)
    thumb = bytes(2_000)
    for start in range(0, N, 2_000):
        vecs = rng.standard_normal((2_000, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.upsert([Item(id=f"i{start + j}", vector=vecs[j], thumbnail=thumb) for j in range(2_000)])
    return store


def test_a_close_during_a_backup_waits_for_the_copy_which_holds_every_item(tmp_path):
    store = _filled(tmp_path / "g")
    dest = tmp_path / "copy"
    copied, ended = {}, {}

    def back_up():
        copied.update(store.backup(dest))
        ended["copy"] = time.perf_counter()

    t = threading.Thread(target=back_up)
    t.start()
    deadline = time.monotonic() + 30
    while not (dest / "store.sqlite3.part").exists():   # the copy has begun writing
        assert time.monotonic() < deadline and t.is_alive(), "the copy never began"
        time.sleep(0.001)
    store.close()   # what a drop does before it removes the folder
    ended["close"] = time.perf_counter()
    shutil.rmtree(tmp_path / "g", ignore_errors=True)   # as a drop does (index.remove_gallery tries again)
    t.join(60)
    assert copied["items"] == N
    assert ended["close"] >= ended["copy"], "close() returned while the copy was still reading"
    assert StoreReader(dest).check().ok
    reopened = Store.open(StoreConfig(path=dest, dim=DIM, model_id="m@1"))
    try:
        assert reopened.count() == N and reopened.get(f"i{N - 1}") is not None
    finally:
        reopened.close()


def test_a_backup_of_a_closed_store_is_store_closed(tmp_path):
    store = _filled(tmp_path / "g")
    store.close()
    with pytest.raises(StoreClosedError):
        store.backup(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
