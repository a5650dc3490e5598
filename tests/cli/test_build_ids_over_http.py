"""A file name the service would refuse as an id (a line break in it) gets an id `index build` stores and the
service takes: the item can be fetched and deleted over HTTP, and `index upload` of the folder makes the same id."""
from __future__ import annotations

import shutil
from urllib.parse import quote

import httpx

from cli import main
from tests.app.conftest import start_server, stop_server


def test_an_item_built_from_a_file_name_with_a_line_break_is_fetched_and_deleted_by_its_id(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    folder = tmp_path / "odd"
    (folder / "My Album").mkdir(parents=True)
    shutil.copy(cat_and_ship_photos / "cat" / "0001.jpg", folder / "My Album" / "new\nline.jpg")
    shutil.copy(cat_and_ship_photos / "cat" / "0002.jpg", folder / "My Album" / "plain.jpg")
    data = tmp_path / "data"
    assert main(["index", "build", str(folder), "--data", str(data), "--model", str(hybrid1_artifact)]) == 0
    capsys.readouterr()
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(data),
                           "SIMSEARCH_API_KEY": "k", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        listed = [i["id"] for i in httpx.get(server.url + "/index").json()["items"]]
        assert sorted(listed) == ["My Album/new\\x0aline.jpg", "My Album/plain.jpg"]
        url = server.url + "/index/" + quote("My Album/new\\x0aline.jpg")
        assert httpx.get(url).status_code == 200
        # index upload of the same folder makes the same ids: nothing new to send, nothing refused
        assert main(["index", "upload", str(folder), "--url", server.url, "--api-key", "k"]) == 0
        assert "2 already in the service, 0 to upload" in capsys.readouterr().out
        assert httpx.delete(url, headers={"X-API-Key": "k"}).status_code == 204
        assert httpx.get(url).status_code == 404
    finally:
        stop_server(server)
