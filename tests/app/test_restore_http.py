"""PUT /galleries/{name}/backup over a real `simsearch serve`: a backup (GET's file) restored after a DELETE serves
the same hits at once, is listed with its items and counted by the metrics; a name in use is a 409 before a byte is
read (the default gallery, which always exists, is replaced only while it is empty); a body that is not a store, a
file cut short and a store of another model's vectors are refused (422, 409) and leave nothing behind, the service
serving on; a body over SIMSEARCH_MAX_RESTORE_BYTES is a 413, declared or not; it takes the key a write takes; a
replica refuses it (405) and Milvus answers 501; a data disk without room is a 507 naming the bytes, and one that
fills while the body comes is a 507 that leaves nothing there."""
from __future__ import annotations

import re
import socket
import sqlite3
import subprocess

import httpx
import numpy as np
import pytest

from .conftest import running, settings_for, start_server, stop_server
from .test_api import assert_error

FULL, READ, HATS = "restore-full-key", "restore-read-key", "restore-hats-key"
KEY_FILE = f"{FULL}\n{READ} read\n{HATS} galleries=hats\n"
MAX_RESTORE = 2_000_000


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A server with the keys of KEY_FILE, backups up to MAX_RESTORE bytes, and the gallery `shoes` of 40 items.
    Yields (server, its data folder, the model id, the dimension)."""
    work = tmp_path_factory.mktemp("restore-http")
    (work / "keys").write_text(KEY_FILE)
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_RESTORE_BYTES": str(MAX_RESTORE)},
                          work, ["--api-key-file", str(work / "keys"), "--log-level", "info"])
    try:
        listing = httpx.get(server.url + "/index").json()
        _write(server.url, listing["model"], listing["dimension"], "shoes", 40)
        yield server, work / "data", listing["model"], listing["dimension"]
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()
    assert not [k for k in (FULL, READ, HATS) if k in log], "a key was written to the log"


def _write(url: str, model: str, dim: int, gallery: str, n: int) -> None:
    vectors = np.random.default_rng(len(gallery)).normal(size=(n, dim))
    body = {"model": model, "items": [{"id": f"{gallery}-{i}", "vector": v.tolist(), "label": gallery,
                                       "metadata": {"n": i}} for i, v in enumerate(vectors)]}
    r = httpx.post(url + "/index", params={"gallery": gallery}, json=body, headers={"X-API-Key": FULL}, timeout=60)
    assert r.status_code == 201, r.text


def _backup(url: str, gallery: str) -> bytes:
    r = httpx.get(f"{url}/galleries/{gallery}/backup", headers={"X-API-Key": FULL}, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def _restore(url: str, gallery: str, body, key: str = FULL, **kw) -> httpx.Response:
    kw.setdefault("headers", {"X-API-Key": key} if key else {})
    return httpx.put(f"{url}/galleries/{gallery}/backup", content=body, timeout=60, **kw)


def _searches(url: str, gallery: str, dim: int) -> list:
    queries = np.random.default_rng(99).normal(size=(3, dim))
    out = []
    for q in queries:
        r = httpx.post(url + "/search", params={"gallery": gallery, "k": 5}, json={"vector": q.tolist()})
        assert r.status_code == 200, r.text
        out.append(r.json()["results"])
    return out


def _left_in(data) -> list[str]:
    """What a restore may leave in the data folder besides the galleries: nothing."""
    return sorted(p.name for p in data.iterdir() if p.name not in ("index", "galleries"))


def _listed(url: str) -> dict[str, int]:
    return {g["name"]: g["count"] for g in httpx.get(url + "/galleries").json()["galleries"]}


def test_a_backup_restored_after_a_delete_serves_the_same_hits_at_once_and_is_listed_and_counted(live):
    server, data, model, dim = live
    before = _searches(server.url, "shoes", dim)
    file = _backup(server.url, "shoes")
    assert httpx.delete(server.url + "/galleries/shoes", headers={"X-API-Key": FULL}).status_code == 200
    assert "shoes" not in _listed(server.url)
    r = _restore(server.url, "shoes", file)
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "shoes", "count": 40, "open": True}
    assert r.headers["x-simsearch-items"] == "40" and r.headers["x-simsearch-model"] == model, r.headers
    assert _searches(server.url, "shoes", dim) == before
    assert _listed(server.url)["shoes"] == 40
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'simsearch_gallery_items\{gallery="shoes"\} 40(\.0)?\n', metrics), metrics[-2000:]
    assert _left_in(data) == []
    item = httpx.get(server.url + "/index/shoes-7", params={"gallery": "shoes"}).json()
    assert item["label"] == "shoes" and item["metadata"] == {"n": 7}
    _write(server.url, model, dim, "shoes", 41)   # it takes writes too
    assert _listed(server.url)["shoes"] == 41


def test_a_name_in_use_is_409_gallery_exists_saying_how_to_replace_it(live):
    server, data, _, _ = live
    file = _backup(server.url, "shoes")
    err = assert_error(_restore(server.url, "shoes", file), 409, "gallery_exists", "replace=true")
    assert "GET /galleries/shoes/backup" in err["message"]
    assert _left_in(data) == []


def test_replace_true_replaces_a_gallery_and_says_how_many_items_it_held(live):
    server, data, model, dim = live
    _write(server.url, model, dim, "old", 5)
    file = _backup(server.url, "shoes")
    r = _restore(server.url, "old", file, params={"replace": "true"})
    assert r.status_code == 201, r.text
    assert r.headers["x-simsearch-replaced-items"] == "5" and r.json()["count"] == _listed(server.url)["shoes"]
    assert _listed(server.url)["old"] == r.json()["count"]
    assert [[h["id"] for h in hits] for hits in _searches(server.url, "old", dim)] == \
        [[h["id"] for h in hits] for hits in _searches(server.url, "shoes", dim)]
    assert _left_in(data) == [] and sorted(p.name for p in (data / "galleries").iterdir() if p.name.startswith("."))\
        == []


def test_a_replace_refused_leaves_the_gallery_serving_as_it_was(live, tmp_path):
    server, data, model, dim = live
    _write(server.url, model, dim, "kept", 7)
    before = _searches(server.url, "kept", dim)
    (tmp_path / "store.sqlite3").write_bytes(_backup(server.url, "shoes"))
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:   # an index kind FAISS cannot make
        conn.execute("UPDATE meta SET value = 'NoSuchIndex,Flat' WHERE key = 'index'")
    conn.close()
    file = (tmp_path / "store.sqlite3").read_bytes()
    assert_error(_restore(server.url, "kept", file, params={"replace": "true"}), 422, "not_a_store", "NoSuchIndex")
    assert _listed(server.url)["kept"] == 7 and _searches(server.url, "kept", dim) == before
    _write(server.url, model, dim, "kept", 8)   # and takes writes
    assert _listed(server.url)["kept"] == 8 and _left_in(data) == []


def test_a_backup_said_to_be_of_a_gallery_marked_incomplete_is_restored_marked(live):
    server, data, _, _ = live
    file = _backup(server.url, "shoes")
    r = _restore(server.url, "partial", file, headers={"X-API-Key": FULL, "X-Simsearch-Incomplete": "true"})
    assert r.status_code == 201, r.text
    assert (data / "galleries" / "partial" / "index" / "incomplete.json").is_file()
    head = httpx.head(server.url + "/galleries/partial/backup", headers={"X-API-Key": FULL})
    assert head.headers.get("x-simsearch-incomplete") == "true", head.headers


def test_a_body_that_is_not_a_store_is_422_and_the_service_serves_on(live):
    server, data, _, dim = live
    before = _listed(server.url)
    assert_error(_restore(server.url, "junk", b"PK\x03\x04 a zip, not a store" * 100), 422, "not_a_store",
                 "not a SQLite database")
    assert_error(_restore(server.url, "junk", b""), 422, "not_a_store")
    assert _listed(server.url) == before and _left_in(data) == []
    assert not (data / "galleries" / "junk").exists()
    assert len(_searches(server.url, "shoes", dim)[0]) == 5


def test_a_file_cut_short_is_422_saying_so(live):
    server, data, _, _ = live
    file = _backup(server.url, "shoes")
    assert_error(_restore(server.url, "cut", file[: len(file) // 2]), 422, "not_a_store", "cut short",
                 str(len(file) // 2))
    assert "cut" not in _listed(server.url) and _left_in(data) == []


def test_a_store_of_another_models_vectors_is_409_naming_the_model(live, tmp_path):
    import index

    server, data, _, _ = live
    vector = np.zeros(16, dtype=np.float32)
    vector[0] = 1
    with index.Store.open(index.StoreConfig(tmp_path / "other", dim=16, model_id="othermodel@123")) as store:
        store.upsert([index.Item("o0", vector)])
    index.backup(tmp_path / "other", tmp_path / "copy")
    file = (tmp_path / "copy" / "store.sqlite3").read_bytes()
    assert_error(_restore(server.url, "other", file), 409, "model_mismatch", "othermodel@123")
    assert "other" not in _listed(server.url) and _left_in(data) == []


def test_a_body_over_the_restore_limit_is_413_declared_or_not(live):
    server, data, _, _ = live
    assert_error(_restore(server.url, "big", b"\0" * (MAX_RESTORE + 1)), 413, "body_too_large", str(MAX_RESTORE))

    def chunks():   # no Content-Length: counted as it comes
        for _ in range(MAX_RESTORE // 65536 + 2):
            yield b"\0" * 65536

    assert_error(_restore(server.url, "big", chunks()), 413, "body_too_large", str(MAX_RESTORE))
    assert "big" not in _listed(server.url) and _left_in(data) == []


def test_a_restore_takes_a_key_that_may_write_the_gallery(live):
    server, _, _, _ = live
    file = _backup(server.url, "shoes")
    assert_error(_restore(server.url, "keyed", file, key=""), 401, "missing_api_key")
    assert_error(_restore(server.url, "keyed", file, key=READ), 403, "key_scope")
    assert_error(_restore(server.url, "keyed", file, key=HATS), 403, "key_scope")
    assert "keyed" not in _listed(server.url)
    r = _restore(server.url, "hats", file, key=HATS)
    assert r.status_code == 201, r.text


def test_the_default_gallery_is_restored_while_it_is_empty_and_once_it_holds_items_only_with_replace(live):
    server, data, _, dim = live
    file = _backup(server.url, "shoes")
    assert _listed(server.url)["default"] == 0
    r = _restore(server.url, "default", file)
    assert r.status_code == 201, r.text
    held = r.json()["count"]
    assert _listed(server.url)["default"] == held > 0
    assert len(_searches(server.url, "default", dim)[0]) == 5
    assert_error(_restore(server.url, "default", file), 409, "gallery_exists", "only while it is empty")
    r = _restore(server.url, "default", _backup(server.url, "hats"), params={"replace": "true"})
    assert r.status_code == 201 and r.headers["x-simsearch-replaced-items"] == str(held), r.text
    assert _listed(server.url)["default"] == r.json()["count"]
    assert _left_in(data) == []


@pytest.mark.anyio
async def test_a_read_only_replica_refuses_a_restore(live, hybrid1_artifact):
    server, data, _, _ = live
    file = _backup(server.url, "shoes")
    async with running(settings_for(hybrid1_artifact, data, read_only=True, api_key=FULL)) as client:
        r = await client.put("/galleries/replica/backup", content=file, headers={"X-API-Key": FULL})
        assert_error(r, 405, "read_only")
    assert "replica" not in _listed(server.url)


@pytest.mark.anyio
async def test_a_replica_serving_a_gallery_serves_the_one_that_replaced_it_at_its_next_request(live, hybrid1_artifact):
    server, data, model, dim = live
    _write(server.url, model, dim, "swap", 3)
    async with running(settings_for(hybrid1_artifact, data, read_only=True)) as replica:
        assert (await replica.get("/index", params={"gallery": "swap"})).json()["count"] == 3
        r = _restore(server.url, "swap", _backup(server.url, "shoes"), params={"replace": "true"})
        assert r.status_code == 201, r.text
        assert (await replica.get("/index", params={"gallery": "swap"})).json()["count"] == r.json()["count"] > 3


@pytest.mark.anyio
async def test_a_service_on_milvus_answers_501_naming_index_copy(make_settings, tmp_path):
    pytest.importorskip("pymilvus")
    async with running(make_settings(milvus_uri=str(tmp_path / "galleries.db"), api_key=FULL)) as client:
        r = await client.put("/galleries/shoes/backup", content=b"x", headers={"X-API-Key": FULL})
        assert_error(r, 501, "not_supported", "simsearch index copy")


@pytest.mark.anyio
async def test_a_backup_larger_than_the_body_limit_of_images_is_restored_up_to_the_restore_limit(make_settings):
    async with running(make_settings(max_body_bytes=50_000, api_key=FULL)) as client:
        key = {"X-API-Key": FULL}
        listing = (await client.get("/index")).json()
        vectors = np.random.default_rng(5).normal(size=(100, listing["dimension"]))
        for at in range(0, 100, 4):   # each request under the 50 kB limit; the store past it
            body = {"model": listing["model"], "items": [{"id": f"v{i}", "vector": vectors[i].tolist(), "metadata":
                                                          {"note": "x" * 500}} for i in range(at, at + 4)]}
            assert (await client.post("/index", json=body, headers=key)).status_code == 201
        file = (await client.get("/galleries/default/backup", headers=key)).content
        assert len(file) > 50_000
        r = await client.put("/galleries/big/backup", content=file, headers=key)
        assert r.status_code == 201, r.text
        assert r.json()["count"] == 100


def _declared_only(url: str, path: str, length: int) -> tuple[int, str]:
    """PUT with a Content-Length of `length` and no body sent: the status and body of the answer (a refusal the
    service makes before it reads a byte)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                  .encode())
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            got += more
    head, _, body = got.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_a_data_disk_without_room_is_507_naming_the_bytes_and_one_that_fills_leaves_nothing(
        hybrid1_artifact, tmp_path, small_disk):
    mount, inside = small_disk   # 8 MB free
    data = mount / "data"
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(data),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, prefix=inside)
    try:
        status, body = _declared_only(server.url, "/galleries/big/backup", 9_000_000)
        assert status == 507 and "insufficient_storage" in body, body
        said = re.search(r"needs (\d+) bytes .* which has (\d+) free", body)
        assert said and int(said[1]) == 9_000_000 > int(said[2]), body

        def chunks():   # sent without Content-Length: the disk fills while it comes
            yield b"SQLite format 3\0" + b"\0" * 65520
            for _ in range(9_000_000 // 65536):
                yield b"\1" * 65536

        try:
            r = _restore(server.url, "big", chunks(), key="")
            assert_error(r, 507, "insufficient_storage", "nothing of it was kept")
        except httpx.TransportError:   # the service answered and closed before the client sent the rest
            pass
        listing = subprocess.run([*inside, "ls", "-A", str(data), str(data / "galleries")], capture_output=True,
                                 text=True)
        assert ".simsearch-restore" not in listing.stdout and "big" not in listing.stdout, listing.stdout
        assert httpx.get(server.url + "/galleries").json()["galleries"] == [{"name": "default", "count": 0,
                                                                            "open": True}]
        small = _backup(server.url, "default")
        assert _restore(server.url, "small", small, key="").status_code == 201   # the disk is free again
    finally:
        stop_server(server)
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()
