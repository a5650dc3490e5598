"""Keys as editors write them, over a real `simsearch serve`: a key file that starts with a UTF-8 byte order mark
(Windows Notepad, PowerShell 5's `Out-File -Encoding utf8`) gives its first key without it, so a client can use
it; a key no client could send in an HTTP header (a letter beyond ASCII, a control character) stops the service at
start, naming the line or the key's place, never the key (before, the service said "1 full" and refused every
client)."""
from __future__ import annotations

import httpx
import pytest

from .conftest import start_server, stop_server
from .test_scoped_keys import _serve_refused


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])   # Notepad's UTF-8; PowerShell 5's `>` and Out-File
def test_a_key_file_starting_with_a_byte_order_mark_gives_a_key_clients_can_use(hybrid1_artifact, tmp_path, encoding):
    keys = tmp_path / "keys"
    keys.write_bytes("bom-key-1\r\nread-key-2 read\r\n".encode(encoding))
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, ["--api-key-file", str(keys)])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.put("/galleries/shoes", headers={"X-API-Key": "bom-key-1"}).status_code == 201
            assert c.put("/galleries/hats", headers={"X-API-Key": "read-key-2"}).status_code == 403
    finally:
        stop_server(live)


@pytest.mark.parametrize("line", ["caf\u00e9-key", "bell\u0007-key", "ok-key,na\u00efve-key"])
def test_a_key_file_key_no_client_could_send_stops_the_service_naming_the_line_not_the_key(hybrid1_artifact,
                                                                                          tmp_path, line):
    keys = tmp_path / "keys"
    keys.write_text(f"# keys\nfull-key\n{line}\n", encoding="utf-8")
    out = _serve_refused({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact)}, ["--api-key-file", str(keys)], tmp_path)
    assert "line 3: a key holds a character an HTTP header cannot carry" in out, out
    assert "caf" not in out and "na\u00efve" not in out and "bell" not in out and "full-key" not in out, out


def test_the_key_variable_refuses_a_key_no_client_could_send_naming_its_place_not_the_key(hybrid1_artifact,
                                                                                         tmp_path):
    out = _serve_refused({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_API_KEY": "good-key,\u00e9-key"},
                         [], tmp_path)
    assert "SIMSEARCH_API_KEY" in out and "key 2 holds a character an HTTP header cannot carry" in out, out
    assert "good-key" not in out and "\u00e9-key" not in out, out


def test_a_key_file_in_another_encoding_stops_the_service_saying_so(hybrid1_artifact, tmp_path):
    keys = tmp_path / "keys"
    keys.write_bytes("caf\u00e9-key\n".encode("latin-1"))
    out = _serve_refused({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact)}, ["--api-key-file", str(keys)], tmp_path)
    assert "not UTF-8 text (byte 3 is 0xe9): save it as UTF-8" in out and "caf" not in out, out
