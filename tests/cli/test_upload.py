"""`simsearch index upload` into a real `simsearch serve` over real HTTP: what `index build` would
store, resumed where it stopped, refused files reported and skipped, and a missing key or an absent
service said in one line; and both HTTP clients (`index upload`, `search --url`) run without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from cli import main
from tests.app.conftest import start_server, stop_server

KEY = "upload-test-key"


def serving(artifact, tmp_path, **env):
    return start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", **env}, tmp_path)


@pytest.fixture
def live(hybrid1_artifact, tmp_path):
    server = serving(hybrid1_artifact, tmp_path)
    yield server
    stop_server(server)


@pytest.fixture
def photos(shared_data, tmp_path):
    """photos/<class>/NNNN.jpg: 4 CIFAR-10 test images of each of 3 classes, plus a file that is not an image."""
    root = cifar_folder(shared_data, tmp_path / "photos", range(4))
    (root / "cat" / "notes.jpg").write_text("not an image at all\n")
    return root


def cifar_folder(shared_data, root, numbers, classes=("cat", "dog", "ship")):
    """root/<class>/NNNN.jpg: the CIFAR-10 (JPEG) test images of these classes with these numbers."""
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "test" and parts[2] in classes \
                    and int(parts[3][:4]) in numbers:
                (root / parts[2]).mkdir(parents=True, exist_ok=True)
                (root / parts[2] / parts[3]).write_bytes(tf.extractfile(m).read())
    return root


def listing(server) -> dict[str, dict]:
    r = httpx.get(server.url + "/index", params={"limit": 1000})
    return {item["id"]: item for item in r.json()["items"]}


def test_upload_stores_what_build_would_resumes_and_skips_refused_files(live, photos, capsys):
    args = ["index", "upload", str(photos), "--url", live.url, "--api-key", KEY, "--batch-size", "5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "13 images in" in out and "0 already in the service, 13 to upload" in out
    assert "uploaded 12 images (1 rejected by the service); it holds 12 items" in out
    items = listing(live)
    assert len(items) == 12 and "cat/notes.jpg" not in items
    assert items["dog/0002.jpg"]["label"] == "dog" and items["dog/0002.jpg"]["metadata"] == {"width": 32, "height": 32}
    # the same search finds an uploaded image by itself
    hit = httpx.post(live.url + "/search?k=1", files={"file": ("q.jpg", (photos / "ship" / "0003.jpg").read_bytes())})
    assert hit.json()["results"][0]["id"] == "ship/0003.jpg"
    # resumed: what the service holds is not sent again (only the refused file is retried)
    (photos / "ship" / "0009.jpg").write_bytes((photos / "ship" / "0001.jpg").read_bytes())
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 already in the service, 2 to upload" in out and "uploaded 1 images (1 rejected" in out
    assert len(listing(live)) == 13
    # --metadata: each new image's keys from a file beside the images, added to its size as build adds them
    (photos / "cat" / "0009.jpg").write_bytes((photos / "cat" / "0001.jpg").read_bytes())
    meta = photos.parent / "meta.jsonl"
    meta.write_text('{"id": "cat/0009.jpg", "album": "trip", "year": 2024}\n{"id": "dog/0002.jpg", "album": "x"}\n')
    assert main(args + ["--metadata", str(meta)]) == 0
    captured = capsys.readouterr()
    assert "1 of the images it names are in the service already and keep the metadata" in captured.err
    items = listing(live)
    assert items["cat/0009.jpg"]["metadata"] == {"width": 32, "height": 32, "album": "trip", "year": 2024}
    assert items["dog/0002.jpg"]["metadata"] == {"width": 32, "height": 32}
    assert "simsearch index edit --metadata" in captured.err   # what sets it on them: below
    # --replace sends every image again, with the file's metadata
    assert main(args + ["--metadata", str(meta), "--replace"]) == 0
    capsys.readouterr()
    assert listing(live)["dog/0002.jpg"]["metadata"] == {"width": 32, "height": 32, "album": "x"}


def test_an_upload_the_service_takes_nothing_of_exits_1_and_says_a_new_gallery_holds_0_items(live, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not a jpeg")
    for _ in range(2):   # not one image taken, the gallery not made: 1, every time
        assert main(["index", "upload", str(junk), "--url", live.url, "--api-key", KEY, "--gallery", "junk"]) == 1
        out = capsys.readouterr().out
        assert "uploaded 0 images (1 rejected by the service); it holds 0 items" in out


def test_an_upload_with_only_refused_files_left_exits_0(live, photos, capsys):
    for run in range(2):   # the second has nothing new to send but the refused file, which is refused again
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0
        out = capsys.readouterr().out
        assert f"uploaded {12 if run == 0 else 0} images (1 rejected by the service)" in out


def test_index_edit_sets_metadata_on_items_a_service_holds_through_it(live, photos, tmp_path, capsys):
    assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0
    capsys.readouterr()
    meta = tmp_path / "later.jsonl"
    meta.write_text('{"id": "cat/0001.jpg", "album": "trip", "year": 2024}\n'
                    '{"id": "dog/0002.jpg", "width": null, "shelf": {"row": 2}}\n{"id": "gone/1.jpg", "album": "x"}\n')
    edit = ["index", "edit", "--metadata", str(meta), "--url", live.url]
    assert main(edit + ["--api-key", "wrong"]) == 2
    assert "refused the API key" in capsys.readouterr().err
    for _ in range(2):   # applied twice: the same metadata
        assert main(edit + ["--api-key", KEY]) == 0
        captured = capsys.readouterr()
        assert "updated the metadata of 2 items" in captured.out
        assert "1 of its 3 rows name no item in gallery 'default' ('gone/1.jpg')" in captured.err
        items = listing(live)
        assert items["cat/0001.jpg"]["metadata"] == {"width": 32, "height": 32, "album": "trip", "year": 2024}
        assert items["dog/0002.jpg"]["metadata"] == {"height": 32, "shelf": {"row": 2}}   # width removed
        assert items["ship/0001.jpg"]["metadata"] == {"width": 32, "height": 32}
    # searches filter by it at once
    hit = httpx.post(live.url + "/search?k=3", params={"where": '{"album": "trip"}'},
                     files={"file": ("q.jpg", (photos / "cat" / "0001.jpg").read_bytes())})
    assert [h["id"] for h in hit.json()["results"]] == ["cat/0001.jpg"]
    # a row the service refuses (metadata over its limit) stops in one line, naming the item
    (tmp_path / "big.jsonl").write_text(json.dumps({"id": "ship/0001.jpg", "notes": "x" * 70_000}) + "\n")
    assert main(["index", "edit", "--metadata", str(tmp_path / "big.jsonl"), "--url", live.url, "--api-key", KEY]) == 2
    err = capsys.readouterr().err
    assert "item 'ship/0001.jpg'" in err and "mend --metadata" in err and len(err.strip().splitlines()) == 1
    # nothing named is held: exit 1
    (tmp_path / "none.csv").write_text("id,album\nno/such.jpg,x\n")
    assert main(["index", "edit", "--metadata", str(tmp_path / "none.csv"), "--url", live.url, "--api-key", KEY]) == 1


def test_upload_stores_a_phone_portraits_size_as_displayed_as_build_does(live, tmp_path, capsys):
    import io

    from PIL import Image

    photo = Image.new("RGB", (640, 480), (200, 30, 30))
    exif = photo.getexif()
    exif[0x0112] = 6   # stored on its side, displayed 480 wide and 640 high
    out = io.BytesIO()
    photo.save(out, "JPEG", exif=exif)
    (tmp_path / "portraits").mkdir()
    (tmp_path / "portraits" / "IMG_0001.JPG").write_bytes(out.getvalue())
    assert main(["index", "upload", str(tmp_path / "portraits"), "--url", live.url, "--api-key", KEY]) == 0
    assert listing(live)["IMG_0001.JPG"]["metadata"] == {"width": 480, "height": 640}
    thumb = httpx.get(live.url + "/index/IMG_0001.JPG/thumbnail").content
    assert Image.open(io.BytesIO(thumb)).size == (96, 128)


def _photos_with_exif(folder: Path) -> dict[str, dict]:
    """Three pictures as cameras and phones write them, and the metadata --exif should give each."""
    import io

    from PIL import Image

    folder.mkdir()
    made = {}
    for name, tags, sub, want in [
            ("phone.jpg", {0x010F: "Apple", 0x0110: "iPhone 13"},
             {0x9003: "2024:06:01 14:03:22", 0x9011: "+02:00"},
             {"taken": "2024-06-01T14:03:22+02:00", "camera": "Apple iPhone 13"}),
            ("camera.jpg", {0x010F: "Canon\x00", 0x0110: "Canon EOS R5", 0x0132: "2023:12:24 18:00:05"}, {},
             {"taken": "2023-12-24T18:00:05", "camera": "Canon EOS R5"}),
            ("odd.jpg", {0x0132: "sometime in May"}, {}, {}),
            ("unset.jpg", {0x0110: "DSC-W800"}, {0x9003: "0000:00:00 00:00:00"}, {"camera": "DSC-W800"})]:
        exif = Image.Exif()
        for tag, value in tags.items():
            exif[tag] = value
        for tag, value in sub.items():
            exif.get_ifd(0x8769)[tag] = value
        out = io.BytesIO()
        Image.new("RGB", (40, 30), (20, 120, 60)).save(out, "JPEG", exif=exif)
        (folder / name).write_bytes(out.getvalue())
        made[name] = {"width": 40, "height": 30, **want}
    Image.new("RGB", (40, 30)).save(folder / "screenshot.png")
    made["screenshot.png"] = {"width": 40, "height": 30}
    return made


def _stored_both_ways(live, artifact, tmp_path, flag: str, want: dict[str, dict]) -> Path:
    """tmp_path/photos sent to the service with `flag` and built locally with it, each storing exactly `want`
    as every image's metadata; the local data folder."""
    from index import Store, StoreConfig

    assert main(["index", "upload", str(tmp_path / "photos"), "--url", live.url, "--api-key", KEY, flag]) == 0
    assert {i: it["metadata"] for i, it in listing(live).items()} == want
    data = tmp_path / "local"
    assert main(["index", "build", str(tmp_path / "photos"), "--model", str(artifact), "--data", str(data),
                 flag]) == 0
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert {i: store.get(i).metadata for i in want} == want
    return data


def test_upload_and_build_store_when_and_with_what_a_photo_was_taken_with_exif(live, hybrid1_artifact, tmp_path,
                                                                              capsys):
    from index import Store, StoreConfig

    want = _photos_with_exif(tmp_path / "photos")
    data = _stored_both_ways(live, hybrid1_artifact, tmp_path, "--exif", want)
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        hits = store.search(store.get("phone.jpg").vector, k=4, where={"taken": {"$gte": "2024"}})[0]
        assert [h.id for h in hits] == ["phone.jpg"]
    # without --exif: the size alone, as before
    assert main(["index", "upload", str(tmp_path / "photos"), "--url", live.url, "--api-key", KEY,
                 "--gallery", "plain"]) == 0
    r = httpx.get(live.url + "/index", params={"gallery": "plain"})
    assert {it["metadata"]["width"] for it in r.json()["items"]} == {40} and \
        all(set(it["metadata"]) == {"width", "height"} for it in r.json()["items"])
    capsys.readouterr()


def _photos_with_gps(folder: Path) -> dict[str, dict]:
    """Pictures with EXIF GPS as phones write it (and as they write it wrong), and the keys --gps should give."""
    import io

    from PIL import Image

    folder.mkdir()
    made = {}
    for name, gps, want in [
            ("paris.jpg", {1: "N", 2: (48.0, 51.0, 30.132), 3: "E", 4: (2.0, 17.0, 40.1316), 5: b"\x00", 6: 35.0},
             {"lat": 48.858370, "lon": 2.294481, "altitude": 35.0}),
            ("sydney.jpg", {1: "S", 2: (33.0, 51.0, 25.0), 3: "E", 4: (151.0, 12.0, 55.0)},
             {"lat": -33.856944, "lon": 151.215278}),
            ("dead-sea.jpg", {1: "N", 2: (31.0, 30.0, 0.0), 3: "E", 4: (35.0, 30.0, 0.0), 5: b"\x01", 6: 430.5},
             {"lat": 31.5, "lon": 35.5, "altitude": -430.5}),
            ("no-fix.jpg", {9: "V", 1: "N", 2: (1.0, 2.0, 3.0), 3: "E", 4: (4.0, 5.0, 6.0)}, {}),
            ("zero.jpg", {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}, {}),
            ("minutes.jpg", {1: "N", 2: (10.0, 75.0, 0.0), 3: "W", 4: (4.0, 5.0, 6.0)}, {}),
            ("half.jpg", {1: "N", 2: (10.0, 5.0, 0.0)}, {})]:
        exif = Image.Exif()
        exif.get_ifd(0x8825).update(gps)
        out = io.BytesIO()
        Image.new("RGB", (40, 30), (20, 120, 60)).save(out, "JPEG", exif=exif)
        (folder / name).write_bytes(out.getvalue())
        made[name] = {"width": 40, "height": 30, **want}
    return made


def test_upload_and_build_store_where_a_photo_was_taken_with_gps_and_a_box_filters_it(live, hybrid1_artifact,
                                                                                     tmp_path, capsys):
    from index import Store, StoreConfig

    want = _photos_with_gps(tmp_path / "photos")
    data = _stored_both_ways(live, hybrid1_artifact, tmp_path, "--gps", want)
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        france = {"lat": {"$gte": 41.0, "$lte": 51.5}, "lon": {"$gte": -5.5, "$lte": 10.0}}
        hits = store.search(store.get("sydney.jpg").vector, k=7, where=france)[0]
        assert [h.id for h in hits] == ["paris.jpg"]
    # without --gps: no location, even with --exif
    assert main(["index", "upload", str(tmp_path / "photos"), "--url", live.url, "--api-key", KEY, "--exif",
                 "--gallery", "private"]) == 0
    r = httpx.get(live.url + "/index", params={"gallery": "private"})
    assert all(set(it["metadata"]) == {"width", "height"} for it in r.json()["items"])
    capsys.readouterr()


def test_upload_and_build_store_a_pngs_exif_alike_before_and_after_its_pixels(live, hybrid1_artifact, tmp_path,
                                                                             capsys):
    """PNGs with their EXIF (eXIf, ImageMagick's text, XMP) before and after the pixels: the upload, which reads them
    without decoding (tests/cli/test_upload_png_exif_without_decoding.py), stores what build stores."""
    from tests.cli.test_upload_png_exif_without_decoding import PNGS

    (tmp_path / "photos").mkdir()
    want = {}
    for i, (data, meta) in enumerate(PNGS.values()):
        (tmp_path / "photos" / f"{i}.png").write_bytes(data)
        want[f"{i}.png"] = {k: v for k, v in meta.items() if k not in ("lat", "lon", "altitude")}
    _stored_both_ways(live, hybrid1_artifact, tmp_path, "--exif", want)
    capsys.readouterr()


def test_upload_can_leave_out_copies_of_what_the_service_holds(shared_data, tmp_path, capsys):
    import io

    from PIL import Image

    photos = cifar_folder(shared_data, tmp_path / "photos", range(4))
    again = io.BytesIO()
    Image.open(photos / "cat" / "0001.jpg").save(again, "JPEG", quality=75)   # the same picture, saved again
    (photos / "cat" / "copy-of-0001.jpg").write_bytes(again.getvalue())
    bundled = Path(__file__).resolve().parents[2] / "model" / "weights" / "hybrid1-cifar10.safetensors"
    server = serving(bundled, tmp_path)
    try:
        args = ["index", "upload", str(photos), "--url", server.url, "--api-key", KEY, "--skip-duplicates", "0.98"]
        assert main(args + ["--gallery", "dedup"]) == 0
        out = capsys.readouterr()
        assert "left out cat/copy-of-0001.jpg: a look-alike of cat/0001.jpg" in out.out + out.err
        assert "uploaded 12 images (0 rejected by the service, 1 left out as look-alikes); it holds 12 items" in out.out
        r = httpx.get(server.url + "/index", params={"limit": 100, "gallery": "dedup"})
        assert r.json()["count"] == 12 and "cat/copy-of-0001.jpg" not in {it["id"] for it in r.json()["items"]}
        assert main(args[:-2] + ["--skip-duplicates", "1.5"]) == 2
        assert "--skip-duplicates is a cosine similarity in (0, 1], got 1.5" in capsys.readouterr().err
    finally:
        stop_server(server)


def test_upload_without_the_key_or_the_service_says_so_in_one_line(live, photos, capsys):
    assert main(["index", "upload", str(photos), "--url", live.url]) == 2
    err = capsys.readouterr().err
    assert "needs an API key for writes: pass --api-key or set SIMSEARCH_API_KEY" in err and "Traceback" not in err
    assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", "wrong"]) == 2
    assert "refused the API key" in capsys.readouterr().err
    assert listing(live) == {}
    assert main(["index", "upload", str(photos), "--url", "http://127.0.0.1:9", "--api-key", KEY]) == 2
    assert "cannot reach the service at http://127.0.0.1:9" in capsys.readouterr().err


def test_an_upload_rides_out_a_restart_of_the_service_and_loses_nothing(hybrid1_artifact, shared_data, tmp_path):
    # 150 images one a request: the service is killed (SIGKILL) after the first 20 are stored and started again
    # on the same port and data; the upload, which ended at the first refused connection, waits for it
    photos = cifar_folder(shared_data, tmp_path / "many", range(50))
    server = serving(hybrid1_artifact, tmp_path)
    upload = subprocess.Popen([sys.executable, "-m", "cli", "index", "upload", str(photos), "--url", server.url,
                               "--api-key", KEY, "--batch-size", "1", "--parallel", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        while len(listing(server)) < 20:
            assert upload.poll() is None, upload.communicate()
        server.proc.kill()
        server.proc.wait(10)
        server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                               "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path,
                              log_name="again.log", port=server.port)
        out, err = upload.communicate(timeout=120)
        assert upload.returncode == 0, out + err
        assert f"lost the service at {server.url}" in out and "trying again for up to 60 s" in out, out
        assert "it holds 150 items" in out, out
        assert sorted(listing(server)) == sorted(f"{c}/{n}" for c in ("cat", "dog", "ship")
                                                 for n in sorted(p.name for p in (photos / c).iterdir())), out
    finally:
        upload.kill()
        stop_server(server)


def test_upload_waits_out_the_rate_limit_and_loses_nothing(hybrid1_artifact, photos, tmp_path, capsys):
    # 12 requests a minute, so a burst of 12, then one every 5 s: the upload's 15 requests meet 429s
    server = serving(hybrid1_artifact, tmp_path, SIMSEARCH_RATE_LIMIT_PER_MINUTE="12")
    try:
        assert main(["index", "upload", str(photos), "--url", server.url, "--api-key", KEY, "--batch-size", "1"]) == 0
        assert "uploaded 12 images (1 rejected" in capsys.readouterr().out
        assert 'status="429"' in httpx.get(server.url + "/metrics").text  # without the key: its own bucket
        assert len(listing(server)) == 12
    finally:
        stop_server(server)


def test_upload_and_remote_search_work_where_torch_cannot_be_imported(live, photos, tmp_path):
    """The HTTP clients import no torch: a machine that only uploads or queries need not carry it,
    and each command starts in a fraction of a second instead of over one."""
    site = tmp_path / "no-torch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = sys.modules['torchvision'] = None\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}", "SIMSEARCH_API_KEY": KEY}
    simsearch = str(Path(sys.executable).parent / "simsearch")
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch" in probe.stderr   # the blocker works

    up = subprocess.run([simsearch, "index", "upload", str(photos), "--url", live.url],
                        env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "uploaded 12 images (1 rejected by the service)" in up.stdout
    found = subprocess.run([simsearch, "search", str(photos), "--url", live.url, "-k", "1"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert "12 of 12 queries with a label (1.000) have a nearest neighbour of that label" in found.stdout
    assert "1 of 13 queries could not be read" in found.stderr


def test_the_clients_send_the_first_key_of_the_variable_or_the_key_file_as_the_service_reads_them(
        hybrid1_artifact, photos, tmp_path, capsys, monkeypatch):
    """SIMSEARCH_API_KEY may hold several keys (comma-separated, during a rotation) and SIMSEARCH_API_KEY_FILE
    one a line with # comments, for the service; `index upload` and `index edit --url` read them alike (the
    whole "old,new" used to be sent, and the key file was not read)."""
    server = serving(hybrid1_artifact, tmp_path, SIMSEARCH_API_KEY=f"{KEY},next-key")
    try:
        monkeypatch.setenv("SIMSEARCH_API_KEY", f"{KEY}, next-key")
        assert main(["index", "upload", str(photos / "cat"), "--url", server.url]) == 0
        keys = tmp_path / "keys"
        keys.write_text("# rotated 2026-12-05\n\nnext-key\n")
        monkeypatch.delenv("SIMSEARCH_API_KEY")
        monkeypatch.setenv("SIMSEARCH_API_KEY_FILE", str(keys))
        assert main(["index", "upload", str(photos / "dog"), "--url", server.url]) == 0
        rows = tmp_path / "meta.jsonl"
        rows.write_text('{"id": "0001.jpg", "album": "trip"}\n')
        assert main(["index", "edit", "--metadata", str(rows), "--url", server.url]) == 0
        assert listing(server)["0001.jpg"]["metadata"]["album"] == "trip"
        monkeypatch.setenv("SIMSEARCH_API_KEY_FILE", str(tmp_path / "absent"))
        capsys.readouterr()
        assert main(["index", "upload", str(photos / "ship"), "--url", server.url]) == 2
        assert f"SIMSEARCH_API_KEY_FILE '{tmp_path / 'absent'}': No such file or directory" in capsys.readouterr().err
    finally:
        stop_server(server)


def _posts_to_index(server) -> dict[str, int]:
    """The service's count of POST /index requests by status, from its /metrics."""
    import re

    text = httpx.get(server.url + "/metrics").text
    counts: dict[str, int] = {}
    for line in text.splitlines():
        m = re.fullmatch(r'simsearch_requests_total\{(.*)\} ([0-9.e+]+)', line)
        if m and 'method="POST"' in m.group(1) and 'route="/index"' in m.group(1):
            status = re.search(r'status="(\d+)"', m.group(1)).group(1)
            counts[status] = counts.get(status, 0) + int(float(m.group(2)))
    return counts


def test_an_upload_over_a_small_body_limit_halves_its_batches_and_reports_a_file_too_large_alone(
        hybrid1_artifact, shared_data, tmp_path, capsys):
    """A 413 for a whole batch (its body over SIMSEARCH_MAX_BODY_BYTES) used to send the batch again one file a
    request; the batch is halved instead until it fits, so many small files still go a few to a request, and
    a file too large alone is reported with the limit while the others go in."""
    import re

    from PIL import Image

    from tests.photo_formats import phone_sized

    photos = cifar_folder(shared_data, tmp_path / "photos", range(32))   # 96 small JPEGs, about 1.2 KB each
    large = phone_sized(Image.open(photos / "ship" / "0000.jpg"))
    (photos / "big").mkdir()
    large.save(photos / "big" / "photo.jpg", quality=95)
    limit = 12_000   # a few CIFAR files a request, never the 640x480 photo
    assert (photos / "big" / "photo.jpg").stat().st_size > limit
    server = serving(hybrid1_artifact, tmp_path, SIMSEARCH_MAX_BODY_BYTES=str(limit))
    try:
        assert main(["index", "upload", str(photos), "--url", server.url, "--api-key", KEY, "--batch-size", "32",
                     "--parallel", "1"]) == 0
        out = capsys.readouterr().out
        assert "uploaded 96 images (1 rejected by the service); it holds 96 items" in out
        # one line naming the file and the limit (and, from the service, its setting)
        assert re.search(rf"\nrejected big/photo.jpg: 413 Content-Length \d+ is larger than the limit of {limit} "
                         r"bytes[^\n]*\n", out), out
        assert sum(line.startswith("rejected ") for line in out.splitlines()) == 1
        items = listing(server)
        files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
        assert sorted(items) == [f for f in files if f != "big/photo.jpg"]
        # halving: 28 requests here (15 of them stored a batch); one file a request after a 413 was 100
        posts = _posts_to_index(server)
        assert sum(posts.values()) < len(files) / 3 and posts["201"] < len(files) / 5, posts
    finally:
        stop_server(server)
