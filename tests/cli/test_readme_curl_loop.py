"""README's curl loop does what the README says it does, run as written against a real service: every file one
folder down posted (a non-image answered 415, not stored), sub-folders left out, and a post over a held id
replacing the item with its metadata; the README no longer calls it "the same" as `index upload`, which
skips held ids."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.app.conftest import start_server, stop_server

README = Path(__file__).resolve().parents[2] / "README.md"


def _loop() -> str:
    text = README.read_text()
    return re.search(r"\n(for f in photos/\*/\*\.\*; do.*?\ndone)", text, re.S).group(1)


def test_the_readme_curl_loop_replaces_held_items_posts_non_images_and_skips_sub_folders_as_it_says(
        cat_and_ship_photos, hybrid1_artifact, tmp_path):
    said = " ".join(README.read_text().split())
    assert "does the same in one command" not in said
    assert "it replaces them, and their metadata (EXIF dates, places, albums) with it" in said
    assert "a file that is not an image is answered 415 and not stored" in said
    assert "the files of a sub-folder such as `photos/cat/2023/` are left out" in said

    work = tmp_path / "session"
    shutil.copytree(cat_and_ship_photos, work / "photos")
    (work / "photos" / "cat" / "notes.txt").write_text("not an image\n")
    (work / "photos" / "ship" / "2023").mkdir()
    shutil.copy(cat_and_ship_photos / "ship" / "0001.jpg", work / "photos" / "ship" / "2023" / "old.jpg")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "d"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    loop = _loop().replace("http://127.0.0.1:8000", server.url).replace("curl -s ", "curl -s -w ' %{http_code}\\n' ")
    try:
        out = subprocess.run(["bash", "-c", loop], cwd=work, capture_output=True, text=True, timeout=120).stdout
        assert out.count(" 201") == 12 and out.count(" 415") == 1, out
        listed = httpx.get(server.url + "/index", params={"limit": 100}).json()
        assert listed["count"] == 12 and "ship/old.jpg" not in {i["id"] for i in listed["items"]}
        assert httpx.patch(server.url + "/index/cat/0001.jpg", json={"metadata": {"album": "trip"}}).status_code == 200
        subprocess.run(["bash", "-c", loop], cwd=work, capture_output=True, timeout=120, check=True)
        assert httpx.get(server.url + "/index/cat/0001.jpg").json()["metadata"] == {}
    finally:
        stop_server(server)


def test_the_readme_curl_loop_stores_files_whose_names_hold_a_comma_a_semicolon_or_quotes(
        cat_and_ship_photos, hybrid1_artifact, tmp_path):
    work = tmp_path / "session"
    shutil.copytree(cat_and_ship_photos, work / "photos")
    odd = ["IMG 1, copy.jpg", "a;type=text.jpg", 'say "hi".jpg', "back\\slash.jpg", "it's.jpg"]
    for name in odd:
        shutil.copy(cat_and_ship_photos / "cat" / "0001.jpg", work / "photos" / "cat" / name)
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "d"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        r = subprocess.run(["bash", "-c", _loop().replace("http://127.0.0.1:8000", server.url)], cwd=work,
                           capture_output=True, text=True, timeout=120)
        assert r.stderr == "", r.stderr
        ids = {i["id"] for i in httpx.get(server.url + "/index", params={"limit": 100}).json()["items"]}
        assert {f"cat/{n}" for n in odd} <= ids, ids
    finally:
        stop_server(server)
