"""`simsearch index backup --url URL [--gallery NAME] DEST` against a real `simsearch serve`: the gallery's backup
downloaded, checked and put where `serve --data DEST` serves it (a named gallery in DEST/galleries/NAME/index, the
default one in DEST/index); a refused key, a download cut off and a file that is not a store leave nothing in
DEST."""
from __future__ import annotations

import socket
import threading

import httpx
import numpy as np
import pytest

import index
from cli import main

from ..app.conftest import start_server, stop_server

KEY = "backup-url-key"


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A server with the key KEY, 30 items in the gallery `shoes` and 2 in the default one."""
    work = tmp_path_factory.mktemp("backup-url")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": KEY}, work)
    try:
        listing = httpx.get(server.url + "/index").json()
        vectors = np.random.default_rng(3).normal(size=(32, listing["dimension"]))
        for gallery, ids in (("shoes", range(30)), ("default", range(30, 32))):
            body = {"model": listing["model"],
                    "items": [{"id": f"i{i}", "vector": vectors[i].tolist(), "label": gallery} for i in ids]}
            r = httpx.post(server.url + "/index", params={"gallery": gallery}, json=body, headers={"X-API-Key": KEY})
            assert r.status_code == 201, r.text
        yield server
    finally:
        stop_server(server)


def test_a_gallery_downloaded_with_url_is_checked_and_put_where_serve_data_serves_it(live, tmp_path, capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    out = capsys.readouterr().out
    assert "shoes: downloaded 30 items" in out and "checked" in out and f"--data {dest}" in out, out
    folder = dest / "galleries" / "shoes" / "index"
    assert sorted(p.name for p in dest.iterdir()) == ["galleries"]
    assert sorted(p.name for p in folder.iterdir()) == ["store.sqlite3"]
    with index.StoreReader(folder) as reader:
        assert reader.count() == 30 and reader.check().ok
        assert {row.label for row in reader.rows()[1].values()} == {"shoes"}

    plain = tmp_path / "plain"
    assert main(["index", "backup", "--url", live.url, "--api-key", KEY, str(plain)]) == 0   # the default gallery
    with index.StoreReader(plain / "index") as reader:
        assert reader.count() == 2


def test_a_refused_key_leaves_nothing_in_dest(live, tmp_path, capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", "wrong", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "refused the API key" in err and "nothing was left" in err, err
    assert not dest.exists()


def _one_answer(head: bytes, body: bytes) -> tuple[str, threading.Thread]:
    """A server on a free port that answers one request with `head` and `body` and then closes the connection
    (a service that dies mid-download, or answers what is not a store): its URL, and its thread."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer():
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(head + body)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


@pytest.mark.parametrize("length, body, said", [
    (1_000_000, b"SQLite format 3\0" + b"\0" * 5000, "did not arrive whole"),   # the connection dropped midway
    (5016, b"SQLite format 3\0" + b"\0" * 5000, "not a simsearch store"),     # whole, and not a store
])
def test_a_download_cut_off_or_not_a_store_leaves_nothing_in_dest(tmp_path, capsys, length, body, said):
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: {length}\r\n"
            "X-Simsearch-Items: 3\r\nX-Simsearch-Last-Seq: 3\r\n\r\n").encode()
    url, thread = _one_answer(head, body)
    dest = tmp_path / "empty"
    dest.mkdir()
    assert main(["index", "backup", "--url", url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 2
    thread.join(10)
    err = capsys.readouterr().err
    assert said in err and "nothing was left" in err, err
    assert list(dest.iterdir()) == []   # the staging folder and its part file gone


def test_a_download_whose_gallery_is_marked_incomplete_or_differs_from_its_headers_is_kept_with_a_warning(
        tmp_path, capsys):
    vector = np.zeros(8, dtype=np.float32)
    vector[0] = 1
    with index.Store.open(index.StoreConfig(tmp_path / "src", dim=8, model_id="m@000000000000")) as store:
        store.upsert([index.Item("a", vector), index.Item("b", vector)])
    index.backup(tmp_path / "src", tmp_path / "clean")   # one file, its write-ahead log folded in
    body = (tmp_path / "clean" / "store.sqlite3").read_bytes()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: {len(body)}\r\n"
            "X-Simsearch-Items: 3\r\nX-Simsearch-Last-Seq: 2\r\nX-Simsearch-Incomplete: true\r\n\r\n").encode()
    url, thread = _one_answer(head, body)
    dest = tmp_path / "dest"
    assert main(["index", "backup", "--url", url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    thread.join(10)
    captured = capsys.readouterr()
    assert "the service said 3 items up to write 2; the file holds 2 up to write 2" in captured.err, captured.err
    assert "marked incomplete" in captured.err and "shoes: downloaded 2 items" in captured.out
    with index.StoreReader(dest / "galleries" / "shoes" / "index") as reader:
        assert reader.count() == 2


def test_a_gallery_marked_incomplete_on_the_service_is_downloaded_marked_so_that_index_stats_says_it(
        live, tmp_path, capsys):
    data = live.log.parent / "data"   # the service's data folder (its work folder's)
    listing = httpx.get(live.url + "/index").json()
    folder = index.gallery_path(data, "part")   # as an `index copy` cut off leaves it, beside the service
    vector = np.zeros(listing["dimension"], dtype=np.float32)
    vector[0] = 1
    with index.Store.open(index.StoreConfig(folder, dim=listing["dimension"], model_id=listing["model"])) as store:
        store.upsert([index.Item("p0", vector)])
    index.mark_incomplete(folder, "index copy", "http://milvus:19530")
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "part", "--api-key", KEY, str(dest)]) == 0
    captured = capsys.readouterr()
    copied = dest / "galleries" / "part" / "index"
    assert "marked incomplete" in captured.err and f"marked so in {copied}" in captured.err, captured.err
    said = index.incomplete(copied)
    assert said and "backup" in said and "'part'" in said and live.url in said and "holds a part" in said, said
    assert main(["index", "stats", "--data", str(dest), "--gallery", "part"]) == 0
    assert "marked incomplete" in capsys.readouterr().out
    assert main(["index", "check", "--data", str(dest), "--gallery", "part"]) == 1   # a part: said, exit 1
    assert "holds a part of its source" in "".join(capsys.readouterr())
    whole = tmp_path / "whole"   # a gallery not marked: its copy is not either
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(whole)]) == 0
    assert index.incomplete(whole / "galleries" / "shoes" / "index") is None
    assert "incomplete" not in capsys.readouterr().err
