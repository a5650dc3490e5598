"""The API key the command line sends: a key file's UTF-8 byte order mark is no part of its first key, and a key
no HTTP header can carry is one line naming where it came from, never the key (it was a UnicodeEncodeError
traceback)."""
from __future__ import annotations

import pytest

from cli import main
from tests.app.conftest import start_server, stop_server


@pytest.fixture
def live(hybrid1_artifact, tmp_path):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": "bom-key-1", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    yield server
    stop_server(server)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_key_file_with_a_byte_order_mark_sends_its_first_key_without_it(live, cat_and_ship_photos, tmp_path,
                                                                          monkeypatch, capsys, encoding):
    keys = tmp_path / "keys"
    keys.write_bytes("bom-key-1\r\n".encode(encoding))
    monkeypatch.delenv("SIMSEARCH_API_KEY", raising=False)
    monkeypatch.setenv("SIMSEARCH_API_KEY_FILE", str(keys))
    assert main(["index", "upload", str(cat_and_ship_photos / "cat"), "--url", live.url]) == 0
    assert "uploaded 6 images" in capsys.readouterr().out


def test_the_first_key_of_a_key_file_line_with_options_is_its_first_word(live, cat_and_ship_photos, tmp_path,
                                                                         monkeypatch, capsys):
    keys = tmp_path / "keys"   # the service's key file syntax: options after the key are no part of it
    keys.write_text("# keys\nbom-key-1 galleries=default\n")
    monkeypatch.delenv("SIMSEARCH_API_KEY", raising=False)
    monkeypatch.setenv("SIMSEARCH_API_KEY_FILE", str(keys))
    assert main(["index", "upload", str(cat_and_ship_photos / "cat"), "--url", live.url]) == 0
    assert "uploaded 6 images" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["file", "variable", "option"])
def test_a_key_no_header_can_carry_is_one_line_naming_its_source_not_the_key(cat_and_ship_photos, tmp_path,
                                                                             monkeypatch, capsys, source):
    key = "caf\u00e9-key"
    monkeypatch.delenv("SIMSEARCH_API_KEY", raising=False)
    monkeypatch.delenv("SIMSEARCH_API_KEY_FILE", raising=False)
    given = []
    if source == "file":
        (tmp_path / "keys").write_text(f"# keys\n{key}\n", encoding="utf-8")
        monkeypatch.setenv("SIMSEARCH_API_KEY_FILE", str(tmp_path / "keys"))
    elif source == "variable":
        monkeypatch.setenv("SIMSEARCH_API_KEY", key)
    else:
        given = ["--api-key", key]
    # no service is needed: the key is refused before anything is sent
    assert main(["index", "upload", str(cat_and_ship_photos), "--url", "http://127.0.0.1:9", *given]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "holds a character an HTTP header cannot carry" in err and "caf" not in err
    assert {"file": "SIMSEARCH_API_KEY_FILE", "variable": "SIMSEARCH_API_KEY", "option": "--api-key"}[source] in err
