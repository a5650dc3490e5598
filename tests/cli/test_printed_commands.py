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


def test_the_after_option_upload_prints_for_a_named_gallery_makes_a_search_of_that_gallery_succeed(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    from tests.app.conftest import start_server, stop_server

    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": "k", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        assert main(["index", "upload", str(cat_and_ship_photos), "--url", server.url, "--api-key", "k",
                     "--gallery", "up"]) == 0
        out = capsys.readouterr().out
        printed = re.search(r"`([^`]*--after [^`]*)`", out).group(1)   # the default gallery is behind it
        query = str(cat_and_ship_photos / "cat" / "0001.jpg")
        assert main(["search", query, "--url", server.url, "-k", "1", *shlex.split(printed)]) == 0, printed
        assert "cat/0001.jpg" in capsys.readouterr().out
    finally:
        stop_server(server)


def test_check_without_gallery_checks_every_gallery_and_fails_for_damage_in_a_named_one(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    _build(cat_and_ship_photos, data, hybrid1_artifact)
    _build(cat_and_ship_photos, data, hybrid1_artifact, "up")
    _build(cat_and_ship_photos / "ship", data, hybrid1_artifact, "boats")
    capsys.readouterr()
    assert main(["index", "check", "--data", str(data)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"checked 3 galleries of {data} (default, boats, up): all ok"

    with sqlite3.connect(data / "galleries" / "up" / "index" / "store.sqlite3") as db:
        db.execute("UPDATE items SET metadata = '{not json' WHERE id = 'cat/0001.jpg'")
    assert main(["index", "check", "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert "damaged: item 'cat/0001.jpg'" in out and "--gallery up --yes" in out
    assert out.count("ok: checked ") == 2
    assert out.strip().splitlines()[-1] == f"checked 3 galleries of {data} (default, boats, up): 1 damaged: up"
    assert main(["index", "check", "--data", str(data), "--gallery", "default"]) == 0   # one gallery, named
    # a gallery that cannot be read at all (not damage found in it): said on stderr, the others checked, exit 2
    (data / "galleries" / "boats" / "index" / "store.sqlite3").write_bytes(b"not a database, " * 64)
    assert main(["index", "check", "--data", str(data)]) == 2
    captured = capsys.readouterr()
    assert "gallery 'boats' could not be checked" in captured.err
    assert captured.out.strip().splitlines()[-1] == \
        f"checked 3 galleries of {data} (default, boats, up): 1 damaged: up; 1 could not be read: boats"
