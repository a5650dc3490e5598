"""GET /galleries/{name}/backup over a real `simsearch serve`: a backup taken while writes go on holds every write
acknowledged before it and, placed as DATA/galleries/NAME/index/store.sqlite3, is served by `simsearch serve --data`
with all of them; it needs a key that may write the gallery (a `read` key, a key of other galleries and no key are
refused, reads open or not); a download the client cuts off leaves no temporary copy behind; a read-only replica
serves backups; a service on Milvus answers 501 naming `simsearch index copy`; a temporary folder without room for
the copy is a 507 naming the bytes it needs; a gallery of another model's vectors is backed up, naming its model;
a download under way holds no slot of the concurrency cap, a second backup meanwhile is a 429 backup_running, and
a client that stops taking the download is cut off, its copy closed."""
from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sqlite3
import threading
import time

from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import running, settings_for, start_server, stop_server
from .test_api import assert_error

FULL, READ, HATS = "backup-full-key", "backup-read-key", "backup-hats-key"
KEY_FILE = f"{FULL}\n{READ} read\n{HATS} galleries=hats\n"


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A server with the keys of KEY_FILE, reads open, its temporary folder (TMPDIR) a folder of the test's own;
    the gallery `shoes` made. Yields (server, its data folder, its temporary folder, the model id, the dimension)."""
    work = tmp_path_factory.mktemp("backup-http")
    (work / "keys").write_text(KEY_FILE)
    (work / "tmp").mkdir()
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "TMPDIR": str(work / "tmp")},
                          work, ["--api-key-file", str(work / "keys"), "--log-level", "info"])
    try:
        assert httpx.put(server.url + "/galleries/shoes", headers={"X-API-Key": FULL}).status_code == 201
        listing = httpx.get(server.url + "/index").json()
        yield server, work / "data", work / "tmp", listing["model"], listing["dimension"]
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()
    assert not [k for k in (FULL, READ, HATS) if k in log], "a key was written to the log"


def _items(model: str, dim: int, ids: list[str]) -> dict:
    rng = np.random.default_rng()
    vectors = rng.normal(size=(len(ids), dim))
    return {"model": model, "items": [{"id": i, "vector": v.tolist(), "label": "shoe", "metadata": {"n": i}}
                                      for i, v in zip(ids, vectors)]}


def _write(url: str, model: str, dim: int, ids: list[str], gallery: str = "shoes") -> None:
    r = httpx.post(url + "/index", params={"gallery": gallery}, json=_items(model, dim, ids),
                   headers={"X-API-Key": FULL}, timeout=60)
    assert r.status_code == 201, r.text


def test_a_backup_taken_while_writes_go_on_holds_every_write_acknowledged_before_it_and_serves_as_a_gallery(
        live, hybrid1_artifact, tmp_path):
    server, _, tmp, model, dim = live
    _write(server.url, model, dim, [f"before-{i}" for i in range(40)])
    acknowledged: list[str] = []
    stop, failures = threading.Event(), []

    def keep_writing():
        n = 0
        while not stop.is_set():
            ids = [f"during-{n}-{j}" for j in range(5)]
            try:
                _write(server.url, model, dim, ids)
            except AssertionError as exc:   # noqa: PERF203
                failures.append(str(exc))
                return
            acknowledged.extend(ids)
            n += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        while len(acknowledged) < 50:
            time.sleep(0.01)
        before = list(acknowledged)   # acknowledged before the backup is asked for: each must be in it
        searched = httpx.post(server.url + "/search/before-1", params={"gallery": "shoes"}, timeout=60)
        r = httpx.get(server.url + "/galleries/shoes/backup", headers={"X-API-Key": FULL}, timeout=60)
        during = len(acknowledged)
    finally:
        stop.set()
        writer.join()
    assert not failures, failures
    assert searched.status_code == 200, searched.text
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.sqlite3"
    assert re.fullmatch(r'attachment; filename="simsearch-shoes-\d{8}T\d{6}Z\.sqlite3"',
                        r.headers["content-disposition"]), r.headers["content-disposition"]
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["x-simsearch-model"] == model
    assert list(tmp.iterdir()) == [], "the temporary copy was left behind"

    restored = tmp_path / "restored"
    (restored / "galleries" / "shoes" / "index").mkdir(parents=True)
    (restored / "galleries" / "shoes" / "index" / "store.sqlite3").write_bytes(r.content)
    copy = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"},
                        tmp_path, ["--data", str(restored)], log_name="restored.log")
    try:
        served = httpx.get(copy.url + "/index", params={"gallery": "shoes", "limit": 0}).json()
        assert served["count"] == int(r.headers["x-simsearch-items"]), (served, dict(r.headers))
        ids = {it["id"] for page in _pages(copy.url, "shoes") for it in page}
        assert {f"before-{i}" for i in range(40)} | set(before) <= ids
        assert len(ids) <= 40 + during   # nothing that was never written
        item = httpx.get(copy.url + "/index/before-3", params={"gallery": "shoes", "vector": "true"}).json()
        assert item["metadata"] == {"n": "before-3"} and len(item["vector"]) == dim
        hits = httpx.post(copy.url + "/search/before-3", params={"gallery": "shoes", "k": 3}, timeout=60).json()
        assert len(hits["results"]) == 3 and {h["id"] for h in hits["results"]} <= ids, hits   # its FAISS rebuilt
    finally:
        stop_server(copy)
    db = sqlite3.connect(restored / "galleries" / "shoes" / "index" / "store.sqlite3")
    assert str(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]) == \
        r.headers["x-simsearch-last-seq"]
    db.close()


def _pages(url: str, gallery: str):
    after = None
    while True:
        page = httpx.get(url + "/index", params={"gallery": gallery, "limit": 1000,
                                                  **({"after": after} if after is not None else {})}).json()
        yield page["items"]
        after = page.get("next_after")
        if after is None:
            return


def test_the_default_gallery_is_backed_up_as_gallery_default(live):
    server, _, _, model, dim = live
    _write(server.url, model, dim, ["plain-1", "plain-2"], gallery="default")
    r = httpx.get(server.url + "/galleries/default/backup", headers={"Authorization": f"Bearer {FULL}"})
    assert r.status_code == 200, r.text
    assert 'filename="simsearch-default-' in r.headers["content-disposition"]
    assert int(r.headers["x-simsearch-items"]) >= 2
    assert_error(httpx.get(server.url + "/galleries/nope/backup", headers={"X-API-Key": FULL}), 404,
                 "gallery_not_found", "nope")


def test_backups_taken_one_after_another_on_one_connection_are_each_served(live):
    # the download's slot was given back only after the answer's last (empty) message, so the next request on a
    # kept-alive connection (curl with two URLs, a session) often came first: 429 backup_running, Retry-After 30,
    # for 24-55 of 80 such backups before the fix
    server, _, _, model, dim = live
    _write(server.url, model, dim, [f"one-connection-{i}" for i in range(5)])
    with httpx.Client(base_url=server.url, headers={"X-API-Key": FULL}, timeout=60) as client:
        answers = [client.get(f"/galleries/{name}/backup")
                   for name in ["shoes", "default"] * 20]
    refused = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
    assert not refused, f"{len(refused)} of {len(answers)} backups refused: {refused[:3]}"


def test_backups_taken_whole_one_after_another_on_new_connections_are_served_and_not_logged_as_cut_off(live):
    # an operator's container check (session 53): uvicorn answers http.disconnect once an answer is complete, so
    # every download taken whole was logged "cut off by the client" (58 of 58); and the slot was given back only
    # after one more read of the file, in a thread, which the next backup on a new connection (curl run again)
    # could overtake: 429 backup_running, Retry-After 30, for 2 of 60 and 3 of 40 such backups
    server, _, _, model, dim = live
    _write(server.url, model, dim, [f"new-connection-{i}" for i in range(3)])
    before = server.log.read_text(errors="replace").count("cut off by the client")
    answers = [httpx.get(server.url + "/galleries/shoes/backup", headers={"X-API-Key": FULL}, timeout=60)
               for _ in range(40)]
    refused = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
    assert not refused, f"{len(refused)} of {len(answers)} backups refused: {refused[:3]}"
    time.sleep(0.5)   # the log line of the last download, were it written
    after = server.log.read_text(errors="replace").count("cut off by the client")
    assert after == before, f"{after - before} of {len(answers)} whole downloads logged as cut off by the client"


def test_a_backup_needs_a_key_that_may_write_the_gallery_even_where_reads_need_none(live):
    server, _, tmp, _, _ = live
    url = server.url + "/galleries/shoes/backup"
    assert httpx.get(server.url + "/index", params={"gallery": "shoes"}).status_code == 200   # reads are open
    assert_error(httpx.get(url), 401, "missing_api_key")
    assert_error(httpx.get(url, headers={"X-API-Key": "not-a-key"}), 403, "invalid_api_key")
    assert_error(httpx.get(url, headers={"X-API-Key": READ}), 403, "key_scope", "write")
    assert httpx.get(server.url + "/index", params={"gallery": "shoes"}, headers={"X-API-Key": READ}).status_code \
        == 200   # the read key reads the gallery
    assert_error(httpx.get(url, headers={"X-API-Key": HATS}), 403, "key_scope")   # a key of other galleries
    r = httpx.put(server.url + "/galleries/hats", headers={"X-API-Key": HATS})   # its own gallery: made, backed up
    assert r.status_code in (200, 201), r.text
    r = httpx.get(server.url + "/galleries/hats/backup", headers={"X-API-Key": HATS})
    assert r.status_code == 200 and 'filename="simsearch-hats-' in r.headers["content-disposition"], r.text[:300]
    assert httpx.get(url, headers={"X-API-Key": FULL}).status_code == 200
    assert list(tmp.iterdir()) == []
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'simsearch_requests_total\{[^}]*route="/galleries/\{name\}/backup"[^}]*status="200"', metrics)


def test_a_download_the_client_cuts_off_leaves_no_temporary_copy(live):
    server, data, tmp, model, dim = live
    size = _big_gallery(data, "big", model, dim)   # made beside the service, which opens it when asked for
    small_buffer = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)])
    with httpx.Client(timeout=60, transport=small_buffer) as client:   # (a receive buffer left to grow takes 32 MB)
        with client.stream("GET", server.url + "/galleries/big/backup", headers={"X-API-Key": FULL}) as r:
            assert r.status_code == 200, r.read()
            assert int(r.headers["content-length"]) > size
            next(r.iter_raw(65536))
            assert list(tmp.iterdir()) == []   # unlinked once open: the open file is all that holds it
            assert _open_backups(server.proc.pid), "the copy being sent is not open"
    deadline = time.monotonic() + 20
    while _open_backups(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _open_backups(server.proc.pid), "the copy of a download cut off is still open (its disk space held)"
    assert "backup download cut off by the client" in server.log_tail(20_000)


def _loopback_buffers() -> int:
    """The bytes a sender hands to this machine's kernel on a loopback connection whose receiver, with the test's
    64 kB receive buffer, reads nothing: sent until nothing more is taken for half a second."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        receiver.connect(listener.getsockname())
        sender, _ = listener.accept()
        with sender:
            sender.setblocking(False)
            held, piece, idle_since = 0, bytes(1 << 16), time.monotonic()
            while time.monotonic() - idle_since < 0.5 and held < (64 << 20):
                try:
                    held += sender.send(piece)
                    idle_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
    return held


def _open_backups(pid: int) -> list[str]:
    """The temporary backup copies the process `pid` holds open."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:   # closed meanwhile
            continue
        if "simsearch-backup-" in target:
            found.append(target)
    return found


@pytest.mark.anyio
async def test_a_read_only_replica_serves_backups(live, hybrid1_artifact):
    server, data, _, model, dim = live
    _write(server.url, model, dim, ["replica-1"])
    async with running(settings_for(hybrid1_artifact, data, read_only=True, api_key=FULL)) as client:
        r = await client.get("/galleries/shoes/backup", headers={"X-API-Key": FULL})
        assert r.status_code == 200, r.text
        assert int(r.headers["x-simsearch-items"]) >= 1 and r.content.startswith(b"SQLite format 3\0")


@pytest.mark.anyio
async def test_a_service_on_milvus_answers_501_naming_index_copy(make_settings, tmp_path):
    pytest.importorskip("pymilvus")
    async with running(make_settings(milvus_uri=str(tmp_path / "galleries.db"), api_key=FULL)) as client:
        assert client.app.state.service.ready, client.app.state.service.reason
        r = await client.get("/galleries/default/backup", headers={"X-API-Key": FULL})
        assert_error(r, 501, "not_supported", "simsearch index copy")


def test_a_backup_the_temporary_folder_has_no_room_for_is_refused_507_naming_the_bytes_it_needs(
        hybrid1_artifact, tmp_path, small_disk):
    import index

    mount, inside = small_disk   # 8 MB free
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "TMPDIR": str(mount)}, tmp_path, prefix=inside)
    try:
        listing = httpx.get(server.url + "/index").json()
        rng = np.random.default_rng(8)
        for name, n in (("big", 160), ("small", 10)):   # 10 MB of thumbnails, and 640 kB
            vectors = rng.normal(size=(n, listing["dimension"])).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            config = index.StoreConfig(index.gallery_path(tmp_path / "data", name), dim=listing["dimension"],
                                       model_id=listing["model"])
            with index.Store.open(config) as store:
                store.upsert([index.Item(f"{name}{j}", vectors[j], None, None, rng.bytes(64_000)) for j in range(n)])
        needs = (tmp_path / "data" / "galleries" / "big" / "index" / "store.sqlite3").stat().st_size
        err = assert_error(httpx.get(server.url + "/galleries/big/backup"), 507, "insufficient_storage",
                           "'big'", "TMPDIR")
        said = re.search(r"needs about (\d+) bytes of temporary space .* has (\d+) free", err["message"])
        assert said and int(said[1]) >= needs > int(said[2]), err   # refused before a byte was copied
        head = httpx.head(server.url + "/galleries/big/backup")   # no copy made: no room needed
        assert head.status_code == 200 and head.headers["x-simsearch-items"] == "160", head.headers
        r = httpx.get(server.url + "/galleries/small/backup")
        assert r.status_code == 200 and r.headers["x-simsearch-items"] == "10", r.text[:200]
        left = subprocess.run([*inside, "ls", "-A", str(mount)], capture_output=True, text=True, check=True).stdout
        assert left.split() == ["ballast"], left
    finally:
        stop_server(server)


def test_a_head_of_a_backup_answers_the_headers_known_without_making_a_copy(live):
    server, _, tmp, model, dim = live
    _write(server.url, model, dim, ["head-1", "head-2"])
    items = httpx.get(server.url + "/galleries").json()["galleries"]
    count = next(g["count"] for g in items if g["name"] == "shoes")
    r = httpx.head(server.url + "/galleries/shoes/backup", headers={"X-API-Key": FULL})
    assert r.status_code == 200 and r.content == b"", r.headers
    assert r.headers["x-simsearch-items"] == str(count) and r.headers["x-simsearch-model"] == model, r.headers
    assert r.headers["content-type"] == "application/vnd.sqlite3" and r.headers["cache-control"] == "no-store"
    assert re.fullmatch(r'attachment; filename="simsearch-shoes-\d{8}T\d{6}Z\.sqlite3"',
                        r.headers["content-disposition"])
    assert "content-length" not in r.headers and "x-simsearch-last-seq" not in r.headers, r.headers
    assert list(tmp.iterdir()) == []
    assert httpx.head(server.url + "/galleries/shoes/backup").status_code == 401
    assert httpx.head(server.url + "/galleries/shoes/backup", headers={"X-API-Key": READ}).status_code == 403
    assert httpx.head(server.url + "/galleries/nope/backup", headers={"X-API-Key": FULL}).status_code == 404


def test_a_backup_of_a_gallery_marked_incomplete_says_so(live):
    import index

    server, data, _, model, dim = live
    folder = index.gallery_path(data, "part")   # as an `index copy` cut off leaves it
    vector = np.zeros(dim, dtype=np.float32)
    vector[0] = 1
    with index.Store.open(index.StoreConfig(folder, dim=dim, model_id=model)) as store:
        store.upsert([index.Item("p0", vector)])
    index.mark_incomplete(folder, "index copy", "http://milvus:19530")
    r = httpx.get(server.url + "/galleries/part/backup", headers={"X-API-Key": FULL})
    assert r.status_code == 200 and r.headers["x-simsearch-incomplete"] == "true", r.headers
    whole = httpx.get(server.url + "/galleries/shoes/backup", headers={"X-API-Key": FULL})
    assert "x-simsearch-incomplete" not in whole.headers


def test_a_gallery_of_another_models_vectors_is_backed_up_naming_the_model_it_holds(live, tmp_path):
    import index

    server, data, tmp, _, _ = live
    vector = np.zeros(16, dtype=np.float32)
    vector[0] = 1
    folder = index.gallery_path(data, "elsewhere")   # made beside the service, by another model
    with index.Store.open(index.StoreConfig(folder, dim=16, model_id="othermodel@123")) as store:
        store.upsert([index.Item("e0", vector), index.Item("e1", vector)])
    assert_error(httpx.get(server.url + "/index", params={"gallery": "elsewhere"}), 409, "model_mismatch")
    r = httpx.get(server.url + "/galleries/elsewhere/backup", headers={"X-API-Key": FULL})
    assert r.status_code == 200, r.text
    assert r.headers["x-simsearch-model"] == "othermodel@123" and r.headers["x-simsearch-items"] == "2", r.headers
    assert 'filename="simsearch-elsewhere-' in r.headers["content-disposition"]
    (tmp_path / "store.sqlite3").write_bytes(r.content)
    with index.StoreReader(tmp_path) as reader:
        assert reader.count() == 2 and reader.check().ok
    assert list(tmp.iterdir()) == []
    assert_error(httpx.get(server.url + "/galleries/elsewhere-not/backup", headers={"X-API-Key": FULL}), 404,
                 "gallery_not_found", "elsewhere")   # a name that is none: still 404, naming the nearest


def _big_gallery(data: Path, name: str, model: str, dim: int) -> int:
    """A gallery of thumbnails made beside the service, more than this machine's loopback buffers are measured to
    hold (3x, +4 MB), so that a client that stops reading holds the download under way: how much they hold differs
    from machine to machine (4 MB here; a CI machine's took a fixed 13 MB whole, so the copy was sent and closed at
    once). Returns the bytes of thumbnails it holds at least."""
    import index

    held = _loopback_buffers()
    if held >= 64 << 20:
        pytest.skip(f"this machine's loopback buffers hold {held} bytes or more: the test's gallery would be too big")
    size = 3 * held + (4 << 20)
    items = max(200, math.ceil(size / 64_000 / 100) * 100)
    rng = np.random.default_rng(11)
    with index.Store.open(index.StoreConfig(index.gallery_path(data, name), dim=dim, model_id=model)) as store:
        for start in range(0, items, 100):
            vectors = rng.normal(size=(100, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert([index.Item(f"b{start + j}", vectors[j], None, None, rng.bytes(64_000)) for j in range(100)])
    return size


def _slow_reader() -> httpx.Client:
    """A client whose socket takes little (a receive buffer left to grow takes 32 MB)."""
    return httpx.Client(timeout=60, transport=httpx.HTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)]))


def test_a_slow_download_holds_no_request_slot_and_a_second_backup_meanwhile_is_refused_429(
        hybrid1_artifact, tmp_path):
    """With SIMSEARCH_MAX_CONCURRENCY=1, a backup whose client reads nothing: searches and listings are still
    served (its slot was given back as the answer began), another backup is refused 429 backup_running with
    Retry-After (one at a time), and once the first is gone a backup is served again."""
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_CONCURRENCY": "1",
                           "TMPDIR": str(tmp_path)}, tmp_path)
    try:
        listing = httpx.get(server.url + "/index").json()
        _big_gallery(tmp_path / "data", "big", listing["model"], listing["dimension"])
        with _slow_reader() as client, client.stream("GET", server.url + "/galleries/big/backup") as held:
            assert held.status_code == 200, held.read()
            pieces = held.iter_raw(65536)   # kept: a generator dropped closes the connection
            next(pieces)
            assert _open_backups(server.proc.pid)   # being sent
            r = httpx.get(server.url + "/index", params={"gallery": "big", "limit": 1})
            assert r.status_code == 200, r.text
            r = httpx.post(server.url + "/search/b1", params={"gallery": "big", "k": 2}, timeout=60)
            assert r.status_code == 200, r.text
            second = httpx.get(server.url + "/galleries/default/backup")
            assert_error(second, 429, "backup_running", "another backup", "one at a time")
            assert second.headers["retry-after"] == "30"
        deadline = time.monotonic() + 20
        while _open_backups(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        r = httpx.get(server.url + "/galleries/default/backup")
        assert r.status_code == 200, r.text
    finally:
        stop_server(server)
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()


def test_a_download_the_client_stops_taking_is_cut_off_its_copy_closed_and_the_next_backup_served(
        hybrid1_artifact, tmp_path, monkeypatch):
    """Over a real server (uvicorn in this process, so that the stall limit can be a second): a client that reads
    the headers and a piece, then nothing while keeping its connection open, is cut off; the temporary copy is
    closed and the next backup is served."""
    import tempfile

    import uvicorn

    from app import create_app

    from .conftest import free_port

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    served = create_app(settings_for(hybrid1_artifact, tmp_path / "data", backup_stall_seconds=1.0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        listing = httpx.get(url + "/index").json()
        _big_gallery(tmp_path / "data", "big", listing["model"], listing["dimension"])
        with _slow_reader() as client, client.stream("GET", url + "/galleries/big/backup") as held:
            assert held.status_code == 200, held.read()
            pieces = held.iter_raw(65536)   # kept: a generator dropped closes the connection
            next(pieces)
            assert _open_backups(os.getpid()), "the copy being sent is not open"
            deadline = time.monotonic() + 20
            while _open_backups(os.getpid()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _open_backups(os.getpid()), "a download taking nothing still holds its copy"
            with pytest.raises(httpx.HTTPError):   # the rest never comes: the connection was closed
                for _ in pieces:
                    pass
        r = httpx.get(url + "/galleries/default/backup")
        assert r.status_code == 200, r.text
        assert list(tmp_path.glob("simsearch-backup-*")) == []
    finally:
        server.should_exit = True
        thread.join(30)
