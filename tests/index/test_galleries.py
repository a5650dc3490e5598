"""Where galleries live in a data folder, which names they may have, and how a follower notices that
a gallery's folder was deleted or made anew."""
from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from index import (DEFAULT_GALLERY, InvalidItemError, Item, Store, StoreConfig, StoreError, StoreReader,
                   check_gallery_name, gallery_names, gallery_path, new_restore_folder, remove_deleted_galleries, remove_gallery)

from .conftest import DIM, unit


def test_the_default_gallery_is_data_index_and_named_ones_live_under_galleries(tmp_path):
    assert gallery_path(tmp_path) == gallery_path(tmp_path, DEFAULT_GALLERY) == tmp_path / "index"
    assert gallery_path(tmp_path, "shoes-2024_a") == tmp_path / "galleries" / "shoes-2024_a" / "index"
    assert gallery_names(tmp_path) == []
    for name in ("zeta", "alpha", DEFAULT_GALLERY):
        Store.open(StoreConfig(gallery_path(tmp_path, name), dim=DIM, model_id="m")).close()
    (tmp_path / "galleries" / "stray").mkdir()           # a folder without a store is not a gallery
    (tmp_path / "galleries" / "Upper" / "index").mkdir(parents=True)
    assert gallery_names(tmp_path) == ["default", "alpha", "zeta"]


@pytest.mark.parametrize("name", ["", "Shoes", "-x", "_x", "a b", "a/b", "..", "é", "x" * 64, None])
def test_a_name_no_gallery_can_have_is_refused_with_the_value(name, tmp_path):
    with pytest.raises(InvalidItemError, match="a gallery name is 1 to 63 lower-case letters"):
        check_gallery_name(name)
    with pytest.raises(InvalidItemError):
        gallery_path(tmp_path, name)


def test_a_follower_notices_its_folder_deleted_or_made_anew_and_a_reader_counts_without_loading(tmp_path):
    rng = np.random.default_rng(3)
    folder = gallery_path(tmp_path, "g")
    writer = Store.open(StoreConfig(folder, dim=DIM, model_id="m"))
    writer.upsert([Item(f"i{k}", v, None, {}) for k, v in enumerate(unit(rng, 3))])
    follower = Store.open(StoreConfig(folder, read_only=True))
    try:
        assert not follower.folder_changed() and not writer.folder_changed()
        with StoreReader(folder) as reader:
            assert reader.count() == 3
        writer.close()
        shutil.rmtree(folder.parent)
        assert follower.folder_changed()
        Store.open(StoreConfig(folder, dim=DIM, model_id="m")).close()   # the same name, made again
        assert follower.folder_changed()
    finally:
        follower.close()


def test_a_follower_reading_in_a_new_thread_after_its_folder_was_deleted_says_the_store_is_closed(tmp_path):
    import threading

    from index import StoreClosedError

    rng = np.random.default_rng(4)
    folder = gallery_path(tmp_path, "g")
    with Store.open(StoreConfig(folder, dim=DIM, model_id="m")) as writer:
        writer.upsert([Item(f"i{k}", v, None, {}) for k, v in enumerate(unit(rng, 3))])
    follower = Store.open(StoreConfig(folder, read_only=True))
    try:
        assert follower.count() == 3
        shutil.rmtree(folder.parent)
        raised: list[BaseException] = []

        def read():   # a thread that has no connection yet must open one, on a file that is gone
            try:
                follower.list()
            except BaseException as exc:  # noqa: BLE001
                raised.append(exc)

        t = threading.Thread(target=read)
        t.start()
        t.join(30)
        assert len(raised) == 1 and isinstance(raised[0], StoreClosedError), raised
        assert "deleted or made anew" in str(raised[0])
    finally:
        follower.close()


def test_removing_a_gallery_hides_it_at_once_even_from_a_reader_that_has_it_open(tmp_path):
    Store.open(StoreConfig(gallery_path(tmp_path, "shoes"), dim=DIM, model_id="m")).close()
    reader = StoreReader(gallery_path(tmp_path, "shoes"))   # its SQLite files stay open through the removal
    try:
        remove_gallery(tmp_path, "shoes")
        assert gallery_names(tmp_path) == []
        with pytest.raises(StoreError, match="no store at"):
            StoreReader(gallery_path(tmp_path, "shoes"))
    finally:
        reader.close()
    with pytest.raises(InvalidItemError, match="default gallery"):
        remove_gallery(tmp_path, DEFAULT_GALLERY)


def test_what_a_removal_left_is_not_a_gallery_and_goes_at_the_next_clean_up(tmp_path):
    Store.open(StoreConfig(gallery_path(tmp_path, "kept"), dim=DIM, model_id="m")).close()
    left = tmp_path / "galleries" / ".deleted-shoes-0123abcd" / "index"
    left.mkdir(parents=True)
    (left / "store.sqlite3-shm").write_bytes(b"x")   # a reader's file, made while the folder went
    assert gallery_names(tmp_path) == ["kept"]
    assert remove_deleted_galleries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "galleries").iterdir()] == ["kept"]
    assert remove_deleted_galleries(tmp_path / "nowhere") == 0


def test_a_restore_folder_is_not_a_gallery_and_what_a_killed_restore_left_goes_at_the_next_clean_up(tmp_path):
    Store.open(StoreConfig(gallery_path(tmp_path, "kept"), dim=DIM, model_id="m")).close()
    stage = new_restore_folder(tmp_path, "shoes")
    assert stage.parent == tmp_path
    Store.open(StoreConfig(gallery_path(stage, "shoes"), dim=DIM, model_id="m")).close()   # received, not placed
    assert gallery_names(tmp_path) == ["kept"]
    assert remove_deleted_galleries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["galleries"]


def test_a_reader_of_a_store_whose_tables_are_not_made_yet_raises_a_store_error(tmp_path):
    folder = gallery_path(tmp_path, "new")
    folder.mkdir(parents=True)
    sqlite3.connect(folder / "store.sqlite3").close()   # the file exists; the store's schema does not yet
    with pytest.raises(StoreError, match="has no records to read .*no such table: meta"):
        StoreReader(folder)
