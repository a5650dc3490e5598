"""`simsearch index upgrade --milvus-uri URI`: the rows of a gallery in Milvus that an older simsearch wrote get
today's filter fields, so the path filters the store refused for them answer as the FAISS store does; it says what
it rewrote, a second run finds nothing, and a gallery in a data folder is not its business."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from cli import main  # noqa: E402
from index import InvalidItemError, Item, MilvusConfig, MilvusStore  # noqa: E402

from ..index.conftest import DIM, unit  # noqa: E402
from ..index.test_milvus_layout import write_old  # noqa: E402

MODEL = "test-model@000000000000"


def _gallery_with_old_rows(uri: str, gallery: str) -> None:
    v = unit(np.random.default_rng(5), 3)
    with MilvusStore.open(MilvusConfig(uri, gallery=gallery, dim=DIM, model_id=MODEL)) as store:
        write_old(store, [Item("old-cam", v[0], None, {"cam": {"make": "canon"}}), Item("old", v[1], None, {"n": 1})])
        store.upsert([Item("new", v[2], None, {"cam": {"make": "nikon"}})])
        with pytest.raises(InvalidItemError, match="index upgrade"):
            store.list(where={"cam.make": {"$exists": False}})


def test_upgrade_rewrites_the_old_rows_and_says_so_then_path_filters_answer(tmp_path, capsys):
    uri = str(tmp_path / "m.db")
    _gallery_with_old_rows(uri, "pets")
    assert main(["index", "upgrade", "--milvus-uri", uri, "--gallery", "pets"]) == 0
    out = capsys.readouterr().out
    assert "gallery 'pets': rewrote the filter fields of 2 of 2 rows" in out and "0 such rows left" in out
    with MilvusStore.open(MilvusConfig(uri, gallery="pets")) as store:
        assert [i.id for i in store.list(where={"cam.make": {"$exists": False}})] == ["old"]
        assert [i.id for i in store.list(where={"cam.make": "canon"})] == ["old-cam"]
    assert main(["index", "upgrade", "--milvus-uri", uri, "--all"]) == 0
    assert "gallery 'pets': every row has the current filter fields; nothing to rewrite" in capsys.readouterr().out


def test_upgrade_without_a_milvus_uri_or_of_a_gallery_milvus_does_not_hold_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SIMSEARCH_MILVUS_URI", raising=False)
    uri = str(tmp_path / "m.db")
    _gallery_with_old_rows(uri, "pets")
    assert main(["index", "upgrade"]) == 2
    assert "give --milvus-uri" in capsys.readouterr().err
    assert main(["index", "upgrade", "--milvus-uri", uri, "--gallery", "cats"]) == 2
    assert "no gallery 'cats'" in capsys.readouterr().err
