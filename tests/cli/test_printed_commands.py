"""Commands the CLI prints for the user to run act on the gallery the user gave: run as printed, they touch
nothing else (the same id in another gallery is another item)."""
from __future__ import annotations

import re
import shlex
import sqlite3

from cli import main
from index import Store, StoreConfig


def _build(photos, data, model, gallery: str | None = None) -> None:
    named = ["--gallery", gallery] if gallery else []
    assert main(["index", "build", str(photos), "--data", str(data), "--model", str(model), *named]) == 0


def test_the_delete_check_prints_for_a_damaged_named_gallery_deletes_there_not_in_the_default_one(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    _build(cat_and_ship_photos, data, hybrid1_artifact)
    _build(cat_and_ship_photos, data, hybrid1_artifact, "up")   # the same ids, in another gallery
    with sqlite3.connect(data / "galleries" / "up" / "index" / "store.sqlite3") as db:
        db.execute("UPDATE items SET metadata = '{not json' WHERE id = 'cat/0001.jpg'")
    capsys.readouterr()

    assert main(["index", "check", "--data", str(data), "--gallery", "up"]) == 1
    out = capsys.readouterr().out
    printed = re.search(r"`simsearch (index delete ID \.\.\.[^`]*)`", out).group(1)
    assert main(shlex.split(printed.replace("ID ...", "cat/0001.jpg"))) == 0

    with Store.open(StoreConfig(data / "index", read_only=True)) as default:
        assert default.count() == 12 and default.has_ids(["cat/0001.jpg"])
    with Store.open(StoreConfig(data / "galleries" / "up" / "index", read_only=True)) as up:
        assert up.count() == 11 and not up.has_ids(["cat/0001.jpg"])
    assert "DELETE /index/ID?gallery=up" in out   # the HTTP way names it too
