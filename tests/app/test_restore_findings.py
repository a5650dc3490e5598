"""PUT /galleries/{name}/backup over a real `simsearch serve`, for what hunt I found (/tmp/s51/I-report.md): a
replica serves a restored default gallery at once; a file carrying schema objects simsearch does not make, rows
it never writes, vectors of the wrong size or dimension, an unknown index kind or bytes past its pages is refused
(422 not_a_store naming what); a refused restore of a non-empty default gallery leaves its writes alone."""
from __future__ import annotations


import sqlite3
import threading

import httpx
import numpy as np
import pytest

from .conftest import running, settings_for, start_server, stop_server
from .test_api import assert_error
from .test_restore_http import _declared_only


@pytest.fixture(scope="module")
def writer(hybrid1_artifact, tmp_path_factory):
    """A server without keys whose gallery `shoes` holds 40 items and the default gallery 3. Yields (server, its
    data folder, the model id, the dimension)."""
    work = tmp_path_factory.mktemp("restore-findings")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work, ["--log-level", "info"])
    try:
        listing = httpx.get(server.url + "/index").json()
        _write(server.url, listing["model"], listing["dimension"], "shoes", 40)
        _write(server.url, listing["model"], listing["dimension"], "default", 3)
        yield server, work / "data", listing["model"], listing["dimension"]
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()


def _write(url: str, model: str, dim: int, gallery: str, n: int, start: int = 0) -> None:
    vectors = np.random.default_rng(len(gallery) + start).normal(size=(n, dim))
    body = {"model": model, "items": [{"id": f"{gallery}-{start + i}", "vector": v.tolist(), "label": gallery,
                                       "metadata": {"n": i}} for i, v in enumerate(vectors)]}
    r = httpx.post(url + "/index", params={"gallery": gallery}, json=body, timeout=60)
    assert r.status_code == 201, r.text


def _backup(url: str, gallery: str) -> bytes:
    r = httpx.get(f"{url}/galleries/{gallery}/backup", timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def _restore(url: str, gallery: str, body, **kw) -> httpx.Response:
    return httpx.put(f"{url}/galleries/{gallery}/backup", content=body, timeout=60, **kw)


@pytest.mark.anyio
async def test_a_replica_serves_the_default_gallery_a_restore_replaced_at_its_next_request(writer, hybrid1_artifact):
    server, data, model, dim = writer
    async with running(settings_for(hybrid1_artifact, data, read_only=True)) as replica:
        assert (await replica.get("/index")).json()["count"] == 3
        r = _restore(server.url, "default", _backup(server.url, "shoes"), params={"replace": "true"})
        assert r.status_code == 201, r.text
        assert (await replica.get("/index")).json()["count"] == 40
        hits = (await replica.post("/search", params={"k": 3}, json={"vector": [1.0] * dim})).json()["results"]
        assert hits and all(h["id"].startswith("shoes-") for h in hits), hits
        assert (await replica.get("/readyz")).status_code == 200


def _crafted(tmp_path, file: bytes, *sql: str) -> bytes:
    """`file` (a backup) with `sql` run on it."""
    path = tmp_path / "crafted.sqlite3"
    path.write_bytes(file)
    conn = sqlite3.connect(path)
    try:
        for statement in sql:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return path.read_bytes()


CRAFTED = {   # what is done to a sound backup, and what the 422 names
    "a trigger that deletes what is written": (
        ["CREATE TRIGGER evil AFTER INSERT ON items BEGIN DELETE FROM items; END"], "trigger 'evil'"),
    "a change-log trigger of its own": (
        ["DROP TRIGGER items_deleted_log",
         "CREATE TRIGGER items_deleted_log AFTER DELETE ON items BEGIN SELECT 1; END"],
        "trigger 'items_deleted_log'"),
    "a view": (["CREATE VIEW everything AS SELECT * FROM items"], "view 'everything'"),
    "a table": (["CREATE TABLE extra (x)"], "table 'extra'"),
    "an index": (["CREATE INDEX items_meta ON items(metadata)"], "index 'items_meta'"),
    "metadata that is not JSON": (["UPDATE items SET metadata = '{not json' WHERE id = 'shoes-3'"],
                                  "1 item(s) hold metadata that is not JSON (item 'shoes-3')"),
    "vectors cut short": (["UPDATE items SET vector = substr(vector, 1, 12)"], "40 item(s) hold a vector of the wrong "
                          "size"),
    "another dimension of the same model": (["UPDATE meta SET value = '128' WHERE key = 'dim'"], "dimension 128"),
    "a dimension of 0": (["UPDATE meta SET value = '0' WHERE key = 'dim'"], "dimension '0'"),
    "an index kind FAISS does not build": (["UPDATE meta SET value = 'NoSuchIndex,Flat' WHERE key = 'index'"],
                                           "NoSuchIndex"),
    "a last_seq that is no number": (["UPDATE meta SET value = 'many' WHERE key = 'last_seq'"], "last_seq"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_file_holding_what_simsearch_never_writes_is_422_naming_it_and_nothing_is_kept(writer, tmp_path, case):
    server, data, _, _ = writer
    sql, named = CRAFTED[case]
    file = _crafted(tmp_path, _backup(server.url, "shoes"), *sql)
    err = assert_error(_restore(server.url, "crafted", file), 422, "not_a_store", named)
    assert "gallery" in err["message"]
    assert "crafted" not in {g["name"] for g in httpx.get(server.url + "/galleries").json()["galleries"]}
    assert sorted(p.name for p in data.iterdir()) == ["galleries", "index"]


def test_a_backup_of_a_store_whose_change_log_triggers_an_older_simsearch_wrote_is_restored(writer, tmp_path):
    """Stores made from 2026-12-03 hold the change log's triggers as that code wrote them, on several lines, and
    SQLite keeps the text as written: the same objects, not foreign ones."""
    server, _, _, _ = writer
    older = ["DROP TRIGGER items_deleted_log", "DROP TRIGGER items_edited_log",
             "CREATE TRIGGER IF NOT EXISTS items_deleted_log AFTER DELETE ON items\n"
             "    BEGIN INSERT INTO changes (seq) VALUES (OLD.seq); END",
             "CREATE TRIGGER IF NOT EXISTS items_edited_log AFTER UPDATE OF label, metadata ON items\n"
             "    BEGIN INSERT INTO changes (seq) VALUES (NEW.seq); END"]
    r = _restore(server.url, "older", _crafted(tmp_path, _backup(server.url, "shoes"), *older))
    assert r.status_code == 201 and r.json()["count"] == 40, r.text


def test_bytes_past_the_pages_its_header_counts_are_422_and_nothing_is_kept(writer):
    server, data, _, _ = writer
    file = _backup(server.url, "shoes")
    assert_error(_restore(server.url, "trailing", file + b"appended " * 800), 422, "not_a_store",
                 "7200 bytes past the")
    assert_error(_restore(server.url, "trailing", file + bytes(4096)), 422, "not_a_store", "4096 bytes past the")
    assert sorted(p.name for p in data.iterdir()) == ["galleries", "index"]
    assert _restore(server.url, "trailing", file).status_code == 201   # the file as GET sent it


def test_a_restore_refused_for_a_default_gallery_holding_items_leaves_its_writes_alone(writer):
    server, data, model, dim = writer
    file = _backup(server.url, "shoes")
    stop, statuses = threading.Event(), []

    def writes(t: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                body = {"model": model, "items": [{"id": f"w{t}-{n}", "vector": [1.0 + n % 7] + [0.5] * (dim - 1)}]}
                statuses.append(client.post(server.url + "/index", json=body).status_code)
                n += 1

    threads = [threading.Thread(target=writes, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    try:
        refused = [_restore(server.url, "default", file).status_code for _ in range(30)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert refused == [409] * 30
    assert statuses and set(statuses) == {201}, {s: statuses.count(s) for s in set(statuses)}


def test_a_restore_of_the_default_gallery_holding_items_is_409_before_a_byte_of_the_body_is_read(writer):
    server, _, _, _ = writer
    status, body = _declared_only(server.url, "/galleries/default/backup", 1_000_000)
    assert status == 409 and "gallery_exists" in body and "only while it is empty" in body, body


def test_concurrent_replacing_restores_of_one_name_are_each_answered_201_with_the_items_restored(writer):
    server, _, _, _ = writer
    file = _backup(server.url, "shoes")
    answers = [None] * 8

    def put(i: int) -> None:
        answers[i] = _restore(server.url, "same", file, params={"replace": "true"})

    for _ in range(2):
        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [(r.status_code, r.json().get("count")) for r in answers] == [(201, 40)] * 8, [r.text for r in answers]


def test_a_file_that_passes_the_checks_but_does_not_open_is_422_and_the_gallery_it_was_to_replace_serves_on(
        writer, tmp_path):
    server, data, model, dim = writer
    _write(server.url, model, dim, "kept", 7)
    file = _crafted(tmp_path, _backup(server.url, "shoes"), "UPDATE items SET seq = 'x' || seq WHERE id = 'shoes-1'")
    r = _restore(server.url, "kept", file, params={"replace": "true"})
    assert_error(r, 422, "not_a_store", "does not open", "nothing of it was kept")
    assert "retry-after" not in r.headers
    assert {g["name"]: g["count"] for g in httpx.get(server.url + "/galleries").json()["galleries"]}["kept"] == 7
    _write(server.url, model, dim, "kept", 1, start=7)   # and takes writes
    assert sorted(p.name for p in data.iterdir()) == ["galleries", "index"]
