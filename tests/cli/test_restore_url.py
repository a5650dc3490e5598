"""`simsearch index restore --url URL --gallery NAME FILE_OR_DEST` against a real `simsearch serve`: the DEST folder
`index backup --url` made (or the bare file) restored after a DELETE, one line saying what the service made, the
gallery serving at once; a refusal (a name in use, a file that is not a store, a refused key) is one line and exit
status 2; a 429 is waited out."""
from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import numpy as np
import pytest

from cli import main

from ..app.conftest import start_server, stop_server

KEY = "restore-url-key"


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A server with the key KEY and 30 items in the gallery `shoes`."""
    work = tmp_path_factory.mktemp("restore-url")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": KEY}, work)
    try:
        listing = httpx.get(server.url + "/index").json()
        vectors = np.random.default_rng(3).normal(size=(30, listing["dimension"]))
        body = {"model": listing["model"], "items": [{"id": f"i{i}", "vector": v.tolist()} for i, v in
                                                      enumerate(vectors)]}
        r = httpx.post(server.url + "/index", params={"gallery": "shoes"}, json=body, headers={"X-API-Key": KEY})
        assert r.status_code == 201, r.text
        yield server
    finally:
        stop_server(server)


def _count(server, gallery: str) -> int | None:
    return {g["name"]: g["count"] for g in httpx.get(server.url + "/galleries").json()["galleries"]}.get(gallery)


def test_a_backup_folder_restored_after_a_delete_serves_again_and_one_line_says_so(live, tmp_path, capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    assert httpx.delete(live.url + "/galleries/shoes", headers={"X-API-Key": KEY}).status_code == 200
    capsys.readouterr()
    assert main(["index", "restore", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("shoes: restored 30 items") and "it serves now" in out, out
    assert _count(live, "shoes") == 30
    r = httpx.post(live.url + "/search", params={"gallery": "shoes", "k": 3, "like": "i4"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text

    file = dest / "galleries" / "shoes" / "index" / "store.sqlite3"   # the bare file, under another name
    assert main(["index", "restore", "--url", live.url, "--gallery", "boots", "--api-key", KEY, str(file)]) == 0
    assert _count(live, "boots") == 30


def test_a_refusal_is_one_line_and_exit_2(live, tmp_path, capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    capsys.readouterr()
    assert main(["index", "restore", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "409" in err and "replace=true" in err, err
    assert main(["index", "restore", "--url", live.url, "--gallery", "shoes", "--replace", "--api-key", KEY,
                 str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "in place of the gallery of 30 items it held" in out, out

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a store" * 100)
    assert main(["index", "restore", "--url", live.url, "--gallery", "junk", "--api-key", KEY, str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "422" in err and "not a SQLite database" in err, err

    assert main(["index", "restore", "--url", live.url, "--gallery", "keyless", "--api-key", "wrong", str(dest)]) == 2
    assert "refused the API key" in capsys.readouterr().err
    both = tmp_path / "both"   # two galleries' stores, neither of them `other`
    for place in (both / "index", both / "galleries" / "shoes" / "index"):
        place.mkdir(parents=True)
        (place / "store.sqlite3").write_bytes((dest / "galleries" / "shoes" / "index" / "store.sqlite3").read_bytes())
    assert main(["index", "restore", "--url", live.url, "--gallery", "other", "--api-key", KEY, str(both)]) == 2
    err = capsys.readouterr().err
    assert "no backup of gallery 'other'" in err and "galleries/shoes/index/store.sqlite3" in err, err
    assert _count(live, "junk") is None and _count(live, "keyless") is None and _count(live, "other") is None


def test_a_429_is_waited_out(hybrid1_artifact, tmp_path, capsys):
    """A service whose rate limit the key has used up (20 a minute: one more every 3 s) answers 429 with
    Retry-After; the restore waits it out and is made."""
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "20", "SIMSEARCH_API_KEY": KEY}, tmp_path)
    try:
        file = tmp_path / "default.sqlite3"
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}) as client:
            file.write_bytes(client.get("/galleries/default/backup").content)
            while client.get("/index").status_code != 429:
                pass
        t0 = time.monotonic()
        assert main(["index", "restore", "--url", server.url, "--gallery", "waits", "--api-key", KEY,
                     str(file)]) == 0
        assert time.monotonic() - t0 >= 1.0
        assert "waits: restored 0 items" in capsys.readouterr().out
    finally:
        stop_server(server)


def test_a_backup_folder_marked_incomplete_is_restored_marked(live, tmp_path, capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    folder = dest / "galleries" / "shoes" / "index"
    (folder / "incomplete.json").write_text('{"command": "index copy", "source": "elsewhere", "said": "a part"}')
    assert main(["index", "restore", "--url", live.url, "--gallery", "marked", "--api-key", KEY, str(dest)]) == 0
    head = httpx.head(live.url + "/galleries/marked/backup", headers={"X-API-Key": KEY})
    assert head.headers.get("x-simsearch-incomplete") == "true", head.headers


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every PUT (its body read whole) with the status and error code of the server's `answer`, with
    Retry-After: 1, counting the PUTs and the bytes they brought."""

    def do_PUT(self):   # noqa: N802  (http.server's name)
        got = len(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.puts.append(got)
        status, code = self.server.answer
        body = json.dumps({"error": {"code": code, "message": f"refused as {code}"}}).encode()
        self.send_response(status)
        for k, v in (("Content-Type", "application/json"), ("Retry-After", "1"), ("Content-Length", str(len(body)))):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status,code,sent", [(503, "index_unavailable", 1), (422, "not_a_store", 1),
                                              (503, "overloaded", 3), (429, "rate_limited", 3)])
def test_the_file_is_sent_again_only_after_a_refusal_made_before_the_body_is_read(tmp_path, capsys, monkeypatch,
                                                                                  status, code, sent):
    from cli import _http

    monkeypatch.setattr(_http, "RETRIES", 2)   # 3 sendings at most, 1 s apart
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.puts, server.answer = [], (status, code)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        file = tmp_path / "store.sqlite3"
        file.write_bytes(b"x" * 100_000)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["index", "restore", "--url", url, "--gallery", "big", "--api-key", KEY, str(file)]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert server.puts == [100_000] * sent
    assert str(status) in capsys.readouterr().err


def test_without_gallery_a_folder_holding_one_named_gallerys_store_restores_it_under_its_own_name(live, tmp_path,
                                                                                                   capsys):
    dest = tmp_path / "backup"
    assert main(["index", "backup", "--url", live.url, "--gallery", "shoes", "--api-key", KEY, str(dest)]) == 0
    assert not (dest / "index").exists()
    capsys.readouterr()
    assert main(["index", "restore", "--url", live.url, "--replace", "--api-key", KEY, str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("shoes: restored 30 items") and "as its place in the folder says" in out, out
    assert _count(live, "default") == 0 and _count(live, "shoes") == 30
