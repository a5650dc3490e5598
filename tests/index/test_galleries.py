"""Where galleries live in a data folder, which names they may have, and how a follower notices that
a gallery's folder was deleted or made anew."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import (DEFAULT_GALLERY, InvalidItemError, Item, Store, StoreConfig, StoreReader, check_gallery_name,
                   gallery_names, gallery_path)

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
