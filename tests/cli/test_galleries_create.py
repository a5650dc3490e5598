"""`simsearch galleries create NAME --url URL` against a real `simsearch serve --no-create-galleries-on-write`:
an upload to a gallery not made yet is refused in words that say how to make it, the command makes it (and says
so, or that it was there already), and the upload then goes in."""
from __future__ import annotations

import httpx
import pytest

from cli import main
from cli._galleries import made_gallery_line
from tests.app.conftest import start_server, stop_server

KEY = "galleries-create-key"


@pytest.fixture
def no_auto_creation(hybrid1_artifact, tmp_path):
    """A service that makes galleries only on request (the serve flag, not the variable)."""
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path,
                          args=["--no-create-galleries-on-write"])
    yield server
    stop_server(server)


def test_galleries_create_makes_the_gallery_an_upload_was_refused_for_once(no_auto_creation, cat_and_ship_photos,
                                                                           capsys, monkeypatch):
    url = no_auto_creation.url
    monkeypatch.delenv("SIMSEARCH_API_KEY", raising=False)
    monkeypatch.delenv("SIMSEARCH_API_KEY_FILE", raising=False)
    upload = ["index", "upload", str(cat_and_ship_photos), "--url", url, "--api-key", KEY, "--gallery", "shoes"]
    assert main(upload) == 2
    err = capsys.readouterr().err
    assert "answered 404" in err and "no gallery named 'shoes'" in err and "PUT /galleries/shoes" in err, err
    assert "simsearch galleries create shoes" in err, err

    assert main(["galleries", "create", "shoes", "--url", url]) == 2   # a write: the key is asked
    assert "needs an API key" in capsys.readouterr().err
    assert main(["galleries", "create", "Shoes!", "--url", url, "--api-key", KEY]) == 2
    assert "answered 422" in capsys.readouterr().err

    assert main(["galleries", "create", "shoes", "--url", url, "--api-key", KEY]) == 0
    assert capsys.readouterr().out.strip() == f"made gallery 'shoes' in {url}"
    assert main(["galleries", "create", "shoes", "--url", url + "/", "--api-key", KEY]) == 0
    assert capsys.readouterr().out.strip() == f"gallery 'shoes' exists already in {url} (0 items): nothing changed"
    listed = httpx.get(url + "/galleries").json()["galleries"]
    assert [(g["name"], g["count"]) for g in listed] == [("default", 0), ("shoes", 0)]

    assert main(upload) == 0
    out = capsys.readouterr().out
    assert "uploaded 12 images" in out and "made gallery" not in out, out
    assert httpx.get(url + "/index", params={"gallery": "shoes"}).json()["count"] == 12


def test_an_upload_is_told_the_line_to_print_only_when_its_write_made_the_gallery():
    line = made_gallery_line({"ids": ["a"], "count": 1, "skipped": [], "gallery_created": True}, "shoes")
    assert line is not None and line.startswith("made gallery 'shoes'")
    assert made_gallery_line({"ids": ["a"], "count": 1, "skipped": []}, "shoes") is None


def test_an_upload_whose_write_makes_its_gallery_says_so_once(hybrid1_artifact, cat_and_ship_photos, tmp_path,
                                                              capsys):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        upload = ["index", "upload", str(cat_and_ship_photos), "--url", server.url, "--api-key", KEY,
                  "--gallery", "shoes", "--batch-size", "5"]
        assert main(upload) == 0
        out = capsys.readouterr().out
        assert out.count("made gallery 'shoes'") == 1 and "uploaded 12 images" in out, out
        assert main([*upload, "--replace"]) == 0
        assert "made gallery" not in capsys.readouterr().out
    finally:
        stop_server(server)
