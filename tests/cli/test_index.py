"""`simsearch index build|stats` and `simsearch search` end to end (real images, real model)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from cli import main
from index import Store, StoreConfig

from ..photo_formats import PHONE_FORMATS, SUFFIX, encode_as, phone_sized

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gallery_tar(shared_data, tmp_path_factory) -> Path:
    """A small ImageFolder tar: 8 CIFAR-10 test images in each of 3 class folders, plus one
    broken file."""
    out = tmp_path_factory.mktemp("gallery") / "mini.tar.gz"
    keep = {"cat", "dog", "ship"}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "test" and parts[2] in keep \
                    and int(parts[3][:4]) < 8:
                dst.addfile(m, src.extractfile(m))
        bad = tarfile.TarInfo("cifar10-jpeg/test/cat/broken.jpg")
        bad.size = 10
        dst.addfile(bad, io.BytesIO(b"not a jpeg"))
    return out


def _extract(tar: Path, dest: Path, only: int | None = None) -> Path:
    with tarfile.open(tar) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        tf.extractall(dest, members=members[:only] if only else members, filter="data")
    return dest / "cifar10-jpeg"


def test_build_from_a_tar_labels_from_class_folders_skips_broken_files_and_stores_thumbnails(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data),
                 "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "25 images" in out and "indexed 24 images (1 skipped)" in out
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.count() == 24
        assert store.labels() == {"cat": 8, "dog": 8, "ship": 8}
        item = store.get("test/dog/0003.jpg")
        assert item.label == "dog" and item.metadata == {"width": 32, "height": 32}
        thumb = store.thumbnail("test/dog/0003.jpg")
        assert thumb.startswith(b"\xff\xd8") and len(thumb) > 100


def test_build_from_a_folder_of_linked_class_folders_indexes_their_images_under_the_links_names(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    source = _extract(gallery_tar, tmp_path / "src") / "test"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "kitten").symlink_to(source / "cat")
    (linked / "boat").symlink_to(source / "ship")
    (linked / "._boat.jpg").write_bytes(b"macOS metadata, not a picture")
    data = tmp_path / "data"
    assert main(["index", "build", str(linked), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    assert "indexed 16 images (1 skipped)" in capsys.readouterr().out  # cat's broken.jpg
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.labels() == {"kitten": 8, "boat": 8}
        assert store.get("boat/0003.jpg").label == "boat"


def test_build_and_search_of_a_folder_do_not_go_up_a_link_to_a_folder_it_lies_in(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    photos = _extract(gallery_tar, tmp_path / "src") / "test"
    ships = photos / "ship"
    (ships / "loop").symlink_to("..")   # back to photos/, which holds cat/ and dog/ too
    data = tmp_path / "data"
    assert main(["index", "build", str(ships), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    assert "8 images in" in capsys.readouterr().out
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.count() == 8 and store.labels() == {None: 8}
    assert main(["search", str(ships), "--data", str(data), "--model", str(hybrid1_artifact), "-k", "1",
                 "--json"]) == 0
    queries = [json.loads(line)["query"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(queries) == [str(ships / f"{i:04d}.jpg") for i in range(8)]


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), rgb).save(buf, "PNG")
    return buf.getvalue()


def _items(data: Path) -> dict[str, str | None]:
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        return {it.id: it.label for it in store.list(0, 1000)}


def test_a_tar_of_a_folder_gives_the_ids_and_labels_a_build_of_the_folder_gives(hybrid1_artifact, tmp_path, capsys):
    photos = tmp_path / "my photos"
    for c, rgb in {"ships": (0, 0, 255), "dogs": (200, 120, 0)}.items():
        (photos / c).mkdir(parents=True)
        for i in range(2):
            (photos / c / f"img {i}.png").write_bytes(_png(rgb))
        (photos / c / "._img 0.png").write_bytes(b"macOS metadata, not a picture")
    (photos / "top.png").write_bytes(_png((0, 255, 0)))
    (photos / ".DS_Store").write_bytes(b"junk")
    (photos / ".thumbnails").mkdir()
    (photos / ".thumbnails" / "t.png").write_bytes(_png((9, 9, 9)))
    args = ["--model", str(hybrid1_artifact)]
    assert main(["index", "build", str(photos), *args, "--data", str(tmp_path / "d")]) == 0
    want = _items(tmp_path / "d")
    assert want == {"dogs/img 0.png": "dogs", "dogs/img 1.png": "dogs", "ships/img 0.png": "ships",
                    "ships/img 1.png": "ships", "top.png": None}
    (photos / "ships" / "link.png").symlink_to(photos / "top.png")
    with tarfile.open(tmp_path / "of.tar", "w") as tf:       # tar cf of.tar "my photos"
        tf.add(photos, arcname="my photos")
    with tarfile.open(tmp_path / "in.tar.gz", "w:gz") as tf:   # tar czf in.tar.gz -C "my photos" .
        tf.add(photos, arcname=".")
    capsys.readouterr()
    for tar in ("of.tar", "in.tar.gz"):
        data = tmp_path / f"d {tar}"
        assert main(["index", "build", str(tmp_path / tar), *args, "--data", str(data)]) == 0
        out = capsys.readouterr().out
        assert f"5 images in {tmp_path / tar} (1 link in it left out):" in out
        assert "indexed 5 images (0 skipped)" in out
        assert _items(data) == want


def test_build_labels_an_image_by_the_class_train_gives_it_and_keeps_its_path_as_id(hybrid1_artifact, tmp_path,
                                                                                     capsys):
    from training import load_dataset

    photos, split = tmp_path / "photos", tmp_path / "split"
    files = {photos: {"shoes/2023/a.png": (200, 0, 0), "shoes/b.png": (210, 0, 0), "bags/c.png": (0, 0, 200),
                      "bags/d.png": (0, 0, 210), "top.png": (0, 200, 0)},
             split: {"train/cat/a.png": (200, 0, 0), "train/cat/2023/b.png": (210, 0, 0),
                     "train/dog/c.png": (0, 0, 200), "test/cat/d.png": (220, 0, 0), "test/dog/e.png": (0, 0, 220),
                     "train/loose.png": (0, 200, 0)}}
    want = {photos: {"shoes/2023/a.png": "shoes", "shoes/b.png": "shoes", "bags/c.png": "bags", "bags/d.png": "bags",
                     "top.png": None},
            split: {"train/cat/a.png": "cat", "train/cat/2023/b.png": "cat", "train/dog/c.png": "dog",
                    "test/cat/d.png": "cat", "test/dog/e.png": "dog", "train/loose.png": None}}
    for root, made in files.items():
        for name, rgb in made.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(_png(rgb))
        data = tmp_path / f"data-{root.name}"
        assert main(["index", "build", str(root), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
        assert _items(data) == want[root]
        # the classes `simsearch train` makes of the same folder
        assert load_dataset(root, use_cache=False).class_names == sorted({v for v in want[root].values() if v})
    # --no-labels: none
    assert main(["index", "build", str(split), "--model", str(hybrid1_artifact), "--data", str(tmp_path / "t"),
                 "--no-labels"]) == 0
    assert set(_items(tmp_path / "t").values()) == {None}


def test_build_resumes_skipping_what_is_already_indexed(gallery_tar, hybrid1_artifact, tmp_path, capsys):
    folder = _extract(gallery_tar, tmp_path / "first", only=10)
    data = tmp_path / "data"
    args = ["--model", str(hybrid1_artifact), "--data", str(data), "--index", "hnsw"]
    assert main(["index", "build", str(folder), *args]) == 0
    capsys.readouterr()
    folder = _extract(gallery_tar, tmp_path / "first")  # the rest arrives (or the run was cut)
    assert main(["index", "build", str(folder), *args]) == 0
    out = capsys.readouterr().out
    assert "10 already indexed, 15 to embed" in out
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.count() == 24 and store.info()["index"] == "hnsw"
        assert store.get("test/ship/0000.jpg").label == "ship"  # ids are paths relative to SOURCE


def test_a_rebuild_with_only_unreadable_files_left_reports_them_and_exits_0_and_1_only_when_none_read(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    folder = _extract(gallery_tar, tmp_path / "src") / "test"
    args = ["--model", str(hybrid1_artifact), "--data", str(tmp_path / "data")]
    for run in range(2):   # the second has nothing new to do but the broken file, which fails again
        assert main(["index", "build", str(folder), *args]) == 0
        captured = capsys.readouterr()
        assert f"indexed {24 if run == 0 else 0} images (1 skipped)" in captured.out
        assert "skipped cat/broken.jpg" in captured.out + captured.err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.png").write_bytes(b"")
    for _ in range(2):   # not one image could be read: 1, every time
        assert main(["index", "build", str(broken), *args, "--gallery", "broken"]) == 1
        assert "indexed 0 images (2 skipped)" in capsys.readouterr().out


def test_build_and_search_say_an_empty_file_or_one_that_is_no_image_in_words(hybrid1_artifact, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes(_png((200, 0, 0)))
    (photos / "junk.jpg").write_bytes(b"not a jpeg")
    (photos / "empty.png").write_bytes(b"")
    args = ["--model", str(hybrid1_artifact), "--data", str(tmp_path / "data")]
    assert main(["index", "build", str(photos), *args]) == 0
    build = capsys.readouterr()
    assert main(["search", str(photos), *args, "-k", "1"]) == 0
    search = capsys.readouterr()
    for said in (build.out + build.err, search.err.replace(f"{photos}/", "")):   # search names the queries' paths
        assert "skipped empty.png: UnidentifiedImageError: empty file (0 bytes)" in said
        assert "skipped junk.jpg: UnidentifiedImageError: not an image Pillow can read (10 bytes)" in said
        assert "0x" not in said
    assert main(["search", str(photos / "empty.png"), *args]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {photos / 'empty.png'}: UnidentifiedImageError: empty file (0 bytes)" in err


def test_search_and_classify_refuse_a_negative_or_nan_max_distance_in_one_line(tmp_path, capsys):
    query = tmp_path / "q.png"
    query.write_bytes(_png((200, 0, 0)))
    for command in ("search", "classify"):
        for value in ("-0.1", "nan", "inf"):
            assert main([command, str(query), "--data", str(tmp_path / "data"), "--max-distance", value]) == 2
            err = capsys.readouterr().err
            assert f"--max-distance must be a number of 0 or more (distances between unit vectors lie in 0..2, so 2 " \
                   f"or more keeps every item), got {float(value)}" in err
            assert len(err.strip().splitlines()) == 1


def _red_and_blue_gallery(artifact, tmp_path, capsys) -> tuple:
    """photos/red/a.png and photos/blue/a.png indexed into tmp_path/data: (the photos folder, the model
    and data options)."""
    photos = tmp_path / "photos"
    for label, rgb in {"red": (200, 0, 0), "blue": (0, 0, 200)}.items():
        (photos / label).mkdir(parents=True)
        (photos / label / "a.png").write_bytes(_png(rgb))
    args = ["--model", str(artifact), "--data", str(tmp_path / "data")]
    assert main(["index", "build", str(photos), *args]) == 0
    capsys.readouterr()
    return photos, args


def test_search_and_classify_take_a_max_distance_over_2_as_the_service_does(hybrid1_artifact, tmp_path, capsys):
    photos, args = _red_and_blue_gallery(hybrid1_artifact, tmp_path, capsys)
    for value in ("2", "2.5", "5"):   # 2 or more keeps every item
        assert main(["search", str(photos / "red" / "a.png"), *args, "-k", "5", "--json", "--max-distance", value]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
        assert main(["classify", str(photos / "red" / "a.png"), *args, "-k", "2", "--max-distance", value]) == 0
        assert "must be" not in capsys.readouterr().err
    from cli import build_parser

    helps = {a.dest: a.help for c in ("search", "classify")
             for a in build_parser()._subparsers._group_actions[0].choices[c]._actions}
    assert "2 or more keeps every item" in helps["max_distance"]


def test_search_together_skips_an_image_it_cannot_read_and_counts_it(hybrid1_artifact, tmp_path, capsys):
    photos, args = _red_and_blue_gallery(hybrid1_artifact, tmp_path, capsys)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    red, blue = photos / "red" / "a.png", photos / "blue" / "a.png"
    assert main(["search", str(red), str(junk), str(blue), "--together", *args, "-k", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 2
    assert f"skipped {junk}: UnidentifiedImageError: not an image Pillow can read (10 bytes)" in err
    assert "1 of 3 images could not be read" in err
    # as many skipped as the one-by-one search skips, and the same exit status when none can be read
    assert main(["search", str(junk), str(junk), "--together", *args]) == 1
    assert "2 of 2 images could not be read" in capsys.readouterr().err
    assert main(["search", str(junk), "--together", *args]) == 2   # one image: as a single query, refused
    assert f"cannot read image {junk}" in capsys.readouterr().err


def test_search_by_group_prints_each_groups_label_as_it_is_written(hybrid1_artifact, tmp_path, capsys):
    photos = tmp_path / "photos"
    for label, rgb in {"飛行機": (200, 200, 255), "Chats é": (120, 80, 40)}.items():
        (photos / label).mkdir(parents=True)
        (photos / label / "a.png").write_bytes(_png(rgb))
    args = ["--model", str(hybrid1_artifact), "--data", str(tmp_path / "data")]
    assert main(["index", "build", str(photos), *args]) == 0
    capsys.readouterr()
    assert main(["search", str(photos / "飛行機" / "a.png"), *args, "-k", "2", "--group-by", "label"]) == 0
    headers = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("label = "))
    assert headers == ['label = "Chats é"', 'label = "飛行機"']


def test_build_refuses_fewer_than_one_worker_in_one_line(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(_png((200, 0, 0)))
    for value in ("0", "-5"):
        assert main(["index", "build", str(tmp_path / "photos"), "--data", str(tmp_path / "data"),
                     "--workers", value]) == 2
        err = capsys.readouterr().err
        assert f"error: --workers must be at least 1, got {value}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_build_takes_each_images_metadata_from_a_json_lines_or_csv_file(gallery_tar, hybrid1_artifact, tmp_path,
                                                                         capsys):
    folder = _extract(gallery_tar, tmp_path / "photos") / "test"
    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"id": "cat/0000.jpg", "album": "trip", "year": 2024, "tags": ["a", "b"]}\n\n'
                    '{"id": "dog/0001.jpg", "width": 999}\n{"id": "nowhere/9.jpg", "album": "x"}\n')
    data = tmp_path / "data"
    args = ["--model", str(hybrid1_artifact), "--data", str(data)]
    assert main(["index", "build", str(folder), *args, "--metadata", str(meta)]) == 0
    err = capsys.readouterr().err
    assert "1 of its 3 rows name no image here (e.g. 'nowhere/9.jpg')" in err
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.get("cat/0000.jpg").metadata == {"width": 32, "height": 32, "album": "trip", "year": 2024,
                                                      "tags": ["a", "b"]}
        assert store.get("dog/0001.jpg").metadata == {"width": 999, "height": 32}   # the file's value wins
        assert store.get("ship/0001.jpg").metadata == {"width": 32, "height": 32}
        assert [h.id for h in store.search(store.get("cat/0000.jpg").vector, k=5, where={"year": 2024})[0]] == \
            ["cat/0000.jpg"]
    # a re-run resumes: what is indexed keeps its metadata, and says so (the one image left to do is the tar's
    # broken file, which fails again: nothing new to do, exit 0)
    assert main(["index", "build", str(folder), *args, "--metadata", str(meta)]) == 0
    assert "2 of the images it names are indexed already and keep the metadata they have" in capsys.readouterr().err
    # CSV: a header with an id column; every cell a string, an empty one no key
    csv_file = tmp_path / "meta.csv"
    csv_file.write_text('id,album,year\ncat/0002.jpg,"home, sweet",2023\nship/0003.jpg,,2022\n', encoding="utf-8")
    assert main(["index", "build", str(folder), *args, "--gallery", "csv", "--metadata", str(csv_file)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "galleries" / "csv" / "index", read_only=True)) as store:
        assert store.get("cat/0002.jpg").metadata == {"width": 32, "height": 32, "album": "home, sweet", "year": "2023"}
        assert store.get("ship/0003.jpg").metadata == {"width": 32, "height": 32, "year": "2022"}
    # a dotted column is a key inside an object, as filters read cam.make (the stores refuse a key with a dot)
    dotted = tmp_path / "dotted.csv"
    dotted.write_text("id,cam.make,cam.lens.mm\ncat/0002.jpg,Canon,50\nship/0003.jpg,Nikon,\n", encoding="utf-8")
    assert main(["index", "build", str(folder), *args, "--gallery", "dotted", "--metadata", str(dotted)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "galleries" / "dotted" / "index", read_only=True)) as store:
        assert store.get("cat/0002.jpg").metadata == {"width": 32, "height": 32,
                                                      "cam": {"make": "Canon", "lens": {"mm": "50"}}}
        assert store.get("ship/0003.jpg").metadata["cam"] == {"make": "Nikon"}
        assert store.count(where={"cam.make": "Canon"}) == 1
    # a wrong file: one line that says where and what, before anything is embedded or stored
    wrong = [("bad.jsonl", '{"id": "cat/0004.jpg"}\n{"id": "x", nope}\n', "bad.jsonl, line 2: not JSON"),
             ("list.jsonl", '["cat/0004.jpg"]\n', "line 1: a JSON object is needed, got list"),
             ("nan.jsonl", '{"id": "cat/0004.jpg", "v": NaN}\n', "line 1: not JSON: NaN"),
             ("noid.jsonl", '{"album": "x"}\n', 'line 1: no "id"'),
             ("twice.csv", "id,a\ncat/0004.jpg,1\ncat/0004.jpg,2\n", "line 3: the id 'cat/0004.jpg' is given a second"),
             ("noid.csv", "name,a\nx,1\n", 'must name the columns, one of them "id"'),
             ("cells.csv", "id,a\ncat/0004.jpg,1,2\n", "line 2: 3 cells for 2 columns"),
             ("meta.txt", "id\n", "give a .jsonl"),
             ("clash.csv", "id,cam,cam.make\ncat/0004.jpg,1,2\n", "the column 'cam' gives 'cam' a value and the column "
                                                                   "'cam.make' puts a key inside it"),
             ("empty.csv", "id,cam.\ncat/0004.jpg,1\n", "the column 'cam.' has an empty part")]
    for name, text, words in wrong:
        (tmp_path / name).write_text(text)
        assert main(["index", "build", str(folder), *args, "--gallery", "bad", "--metadata", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (data / "galleries" / "bad").exists()
    # metadata the store refuses (over 64 KB of JSON) stops the build in one line; what came before is kept
    (tmp_path / "big.jsonl").write_text(json.dumps({"id": "cat/0004.jpg", "notes": "x" * 70_000}) + "\n")
    assert main(["index", "build", str(folder), *args, "--gallery", "big", "--metadata", str(tmp_path / "big.jsonl"),
                 "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "item 'cat/0004.jpg': metadata is" in err and f"mend --metadata {tmp_path / 'big.jsonl'}" in err


def test_index_edit_sets_metadata_from_a_file_on_items_already_indexed(gallery_tar, hybrid1_artifact, tmp_path,
                                                                       capsys):
    folder = _extract(gallery_tar, tmp_path / "photos") / "test"
    data = tmp_path / "data"
    assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        vector = store.get("cat/0000.jpg").vector
    meta = tmp_path / "later.jsonl"
    meta.write_text('{"id": "cat/0000.jpg", "album": "trip", "year": 2024}\n'
                    '{"id": "dog/0001.jpg", "height": null, "tags": ["a"]}\n{"id": "nowhere/9.jpg", "album": "x"}\n')
    for _ in range(2):   # applied twice: the same metadata
        assert main(["index", "edit", "--metadata", str(meta), "--data", str(data)]) == 0
        captured = capsys.readouterr()
        assert "updated the metadata of 2 items" in captured.out
        assert "1 of its 3 rows name no item in gallery 'default' ('nowhere/9.jpg')" in captured.err
        with Store.open(StoreConfig(data / "index", read_only=True)) as store:
            assert store.get("cat/0000.jpg").metadata == {"width": 32, "height": 32, "album": "trip", "year": 2024}
            assert store.get("dog/0001.jpg").metadata == {"width": 32, "tags": ["a"]}
            assert store.get("dog/0001.jpg").label == "dog"
            assert [h.id for h in store.search(vector, k=3, where={"album": "trip"})[0]] == ["cat/0000.jpg"]
    csv_file = tmp_path / "later.csv"
    csv_file.write_text("id,album\nship/0001.jpg,sea\n")
    # while another process (a service) holds the index for writing: one line that says to go through it
    with Store.open(StoreConfig(data / "index")):
        assert main(["index", "edit", "--metadata", str(csv_file), "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert "edit through it: add --url" in err and len(err.strip().splitlines()) == 1
    assert main(["index", "edit", "--metadata", str(csv_file), "--data", str(data)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.get("ship/0001.jpg").metadata == {"width": 32, "height": 32, "album": "sea"}
    # no row names an item: exit 1; a file that is not one: 2, before anything changes
    (tmp_path / "none.jsonl").write_text('{"id": "no/such.jpg", "album": "x"}\n')
    assert main(["index", "edit", "--metadata", str(tmp_path / "none.jsonl"), "--data", str(data)]) == 1
    (tmp_path / "bad.jsonl").write_text('{"id": "cat/0000.jpg", "album": "y"}\n{nope}\n')
    assert main(["index", "edit", "--metadata", str(tmp_path / "bad.jsonl"), "--data", str(data)]) == 2
    assert "bad.jsonl, line 2: not JSON" in capsys.readouterr().err
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.get("cat/0000.jpg").metadata["album"] == "trip"


def test_index_facets_counts_the_items_of_each_value_as_get_facets_does(gallery_tar, hybrid1_artifact, tmp_path,
                                                                          capsys):
    folder = _extract(gallery_tar, tmp_path / "photos") / "test"
    data = tmp_path / "data"
    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"id": "cat/0000.jpg", "year": 2024}\n{"id": "cat/0001.jpg", "year": "2024"}\n'
                    '{"id": "dog/0001.jpg", "year": 2024.0}\n{"id": "ship/0001.jpg", "year": [2024]}\n')
    assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), "--data", str(data),
                 "--metadata", str(meta)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        labels = store.labels()
        total = store.count()
    assert main(["index", "facets", "label", "--data", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"label: {len(labels)} values over {total} items"
    assert sorted((line.split()[0], int(line.split()[1])) for line in out[1:]) == sorted(labels.items())
    # JSON's equality: 2024 and 2024.0 one value, "2024" another (quoted, so that it reads as a string)
    assert main(["index", "facets", "metadata.year", "--data", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"metadata.year: 2 values over {total} items"
    # ship's [2024] counts under its element 2024 (docs/index.md "Filters", Lists)
    assert [line.split() for line in out[1:3]] == [["2024", "3"], ['"2024"', "1"]]
    assert f"(no value: {total - 4})" in out[3] and len(out) == 4
    assert main(["index", "facets", "metadata.year", "--label", "cat", "--limit", "1", "--json", "--data",
                 str(data)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["values"] == [{"value": 2024, "count": 1}] and got["others"] == 1 and got["distinct"] == 2
    assert got["items"] == labels["cat"] and got["missing"] == labels["cat"] - 2
    # under a metadata filter
    assert main(["index", "facets", "metadata.year", "--where", '{"year": {"$gte": 2000}}', "--json", "--data",
                 str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["values"] == [{"value": 2024, "count": 3}]
    for args, words in [(["year"], "FIELD='year'"), (["label", "--where", "{nope"], "--where"),
                        (["label", "--limit", "0"], "--limit must be at least 1")]:
        assert main(["index", "facets", *args, "--data", str(data)]) == 2
        assert words in capsys.readouterr().err
    # printed into a pipe whose reader has gone (`| head`): no traceback
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "index", "facets", "label", "--data", str(data)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == "", done.stderr


def test_stats_counts_unlabelled_items_apart_from_a_label_named_none(hybrid1_artifact, tmp_path, capsys):
    photos = tmp_path / "lab"
    (photos / "None").mkdir(parents=True)
    (photos / "None" / "a.png").write_bytes(_png((200, 0, 0)))
    for i in range(2):
        (photos / f"top{i}.png").write_bytes(_png((0, 0, 200 + i)))
    data = tmp_path / "data"
    assert main(["index", "build", str(photos), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--data", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 3 and stats["labels"] == {"None": 1} and stats["unlabelled"] == 2
    assert main(["index", "stats", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "labels\n  None  1\n  (no value: 2)\n" in out
    # the counts stand in one column in a terminal, whatever script the labels are in (a CJK character takes two)
    (photos / "飛行機").mkdir()
    (photos / "飛行機" / "b.png").write_bytes(_png((0, 200, 0)))
    assert main(["index", "build", str(photos), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "\n  None    1\n  飛行機  1\n" in out


def test_stats_and_search_from_the_command_line(gallery_tar, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--data", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 24 and stats["dim"] == 256 and stats["labels"] == {"cat": 8, "dog": 8, "ship": 8}
    assert stats["model_id"].startswith("hybrid1-test@")
    assert main(["index", "stats", "--data", str(data)]) == 0
    assert "items     24" in capsys.readouterr().out

    query = _extract(gallery_tar, tmp_path / "q") / "test" / "ship" / "0002.jpg"
    assert main(["search", str(query), "--data", str(data), "--model", str(hybrid1_artifact), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].endswith("test/ship/0002.jpg") and "d=0.0000" in lines[0]
    assert main(["search", str(query), "--data", str(data), "--model", str(hybrid1_artifact),
                 "-k", "4", "--label", "cat", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and {h["label"] for h in hits} == {"cat"}


def test_search_filters_by_metadata_from_the_command_line(gallery_tar, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    query = _extract(gallery_tar, tmp_path / "q") / "test" / "ship" / "0002.jpg"
    args = ["search", str(query), "--data", str(data), "--model", str(hybrid1_artifact), "-k", "5", "--json"]
    capsys.readouterr()
    # index build records each image's size: the 32x32 CIFAR-10 images all match 32, none "32"
    assert main([*args, "--where", '{"width": 32, "height": 32}']) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main([*args, "--where", '{"width": "32"}']) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*args, "--where", '{"width": {"$lt": 32}}']) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*args, "--where", '{"width": {"$gte": 32}, "height": {"$in": [16, 32]}}']) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main([*args, "--where", '{"width": {"$wider": 32}}']) == 2
    assert "--where: 'width' has an unknown operator '$wider'" in capsys.readouterr().err
    assert main([*args, "--where", '{"width": [32]}']) == 2
    assert "'width' must be a string, number, true, false or null" in capsys.readouterr().err
    assert main([*args, "--where", "{width"]) == 2
    assert "--where '{width' is not valid JSON" in capsys.readouterr().err


def test_delete_counts_first_then_removes_by_id_label_or_filter(gallery_tar, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()

    def count() -> int:
        with Store.open(StoreConfig(data / "index", read_only=True)) as store:
            return store.count()

    assert main(["index", "delete", "--data", str(data), "--label", "cat"]) == 0  # a dry run without --yes
    assert "would delete 8 of the 24 items" in capsys.readouterr().out and count() == 24
    assert main(["index", "delete", "--data", str(data), "--label", "cat", "--yes"]) == 0
    assert "deleted 8 items" in capsys.readouterr().out and count() == 16
    assert main(["index", "delete", "--data", str(data), "--where", '{"width": {"$gte": 32}}', "--label", "dog",
                 "--yes"]) == 0
    assert "deleted 8 items" in capsys.readouterr().out and count() == 8
    assert main(["index", "delete", "--data", str(data), "test/ship/0001.jpg", "nope", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert "deleted 1 item\n" in out and count() == 7 and "1 of the ids given is not in " in err and "'nope'" in err
    assert main(["index", "delete", "--data", str(data), "nope", "test/ship/0001.jpg", "--yes"]) == 1   # none held
    assert "2 of the ids given are not in" in capsys.readouterr().err and count() == 7
    for args, words in ((["--yes"], "give the ids to delete, or --label"), (["x", "--label", "ship"], "not both"),
                        (["--where", '{"width": {"$near": 1}}'], "--where: 'width' has an unknown operator")):
        assert main(["index", "delete", "--data", str(data), *args]) == 2
        assert words in capsys.readouterr().err
    with Store.open(StoreConfig(data / "index")):  # as `simsearch serve` holds it
        assert main(["index", "delete", "--data", str(data), "--label", "ship"]) == 0  # counting still works
        assert "would delete 7 of the 7 items" in capsys.readouterr().out
        assert main(["index", "delete", "--data", str(data), "--label", "ship", "--yes"]) == 2
        assert "delete over HTTP: DELETE /index/{id}" in capsys.readouterr().err
    assert count() == 7


def test_build_and_search_read_the_files_phones_write(shared_data, hybrid1_artifact, tmp_path, capsys):
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        photo = phone_sized(Image.open(tar.extractfile("cifar10-jpeg/test/automobile/0000.jpg")))
    folder = tmp_path / "photos"
    for i, fmt in enumerate(PHONE_FORMATS):
        (folder / "car").mkdir(parents=True, exist_ok=True)
        (folder / "car" / f"{i}{SUFFIX[fmt]}").write_bytes(encode_as(photo, fmt))
    (folder / "plane").mkdir()
    (folder / "plane" / "0.jpg").write_bytes(encode_as(photo.rotate(90), "JPEG"))
    (folder / "notes.txt").write_text("not an image")
    data = tmp_path / "data"
    assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    assert "indexed 4 images (0 skipped)" in capsys.readouterr().out
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.labels() == {"car": 3, "plane": 1}
        assert store.get("car/1.heic").metadata == {"width": 640, "height": 480}
    assert main(["search", str(folder / "car" / "1.heic"), "--data", str(data), "--model", str(hybrid1_artifact),
                 "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {h["id"] for h in hits} == {"car/0.mpo", "car/1.heic", "car/2.avif"}


def test_build_stores_a_portrait_phone_photo_upright_with_the_vector_the_service_gives_it(
        shared_data, hybrid1_artifact, tmp_path, capsys):
    import numpy as np

    import model

    # A phone's portrait: stored 640x480 on its side with EXIF orientation 6 (displayed 480x640)
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        photo = phone_sized(Image.open(tar.extractfile("cifar10-jpeg/test/automobile/0000.jpg")))
    exif = photo.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=92, exif=exif)
    (tmp_path / "photos" / "car").mkdir(parents=True)
    (tmp_path / "photos" / "car" / "portrait.jpg").write_bytes(out.getvalue())
    data = tmp_path / "data"
    assert main(["index", "build", str(tmp_path / "photos"), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        item = store.get("car/portrait.jpg")
        thumb = Image.open(io.BytesIO(store.thumbnail("car/portrait.jpg")))
    assert item.metadata == {"width": 480, "height": 640}   # as displayed
    assert thumb.size == (96, 128)   # upright, as the service's thumbnail and the search page show it
    # the vector the service and model.Embedder give the file (its JPEG decoded at a reduced scale)
    direct = model.Embedder.from_file(hybrid1_artifact, device="cpu").embed([Image.open(io.BytesIO(out.getvalue()))])
    assert np.abs(item.vector - direct[0]).max() < 1e-6
    # a search with a region of the file, here and as the service would embed it
    assert main(["search", str(tmp_path / "photos" / "car" / "portrait.jpg"), "--data", str(data),
                 "--model", str(hybrid1_artifact), "-k", "1", "--json", "--crop", "0,0,0.5,0.5"]) == 0
    region = json.loads(capsys.readouterr().out)[0]
    upright = Image.open(io.BytesIO(out.getvalue())).transpose(Image.Transpose.ROTATE_270)
    cut = model.Embedder.from_file(hybrid1_artifact, device="cpu").embed([upright.crop((0, 0, 240, 320))])[0]
    assert region["id"] == "car/portrait.jpg"
    assert region["score"] == pytest.approx(float(np.dot(cut, item.vector)), abs=2e-3)
    assert main(["search", str(tmp_path / "photos"), "--data", str(data), "--crop", "0.5,0,0.2,1"]) == 2
    assert "--crop: crop 0.5,0,0.2,1: left must be less than right" in capsys.readouterr().err


def test_build_stores_thumbnails_of_the_size_the_service_stores_or_the_size_asked_for(
        shared_data, hybrid1_artifact, tmp_path, capsys):
    from app._settings import Settings

    import model

    # a 640x480 photo: `index build` stored 96 px thumbnails while POST /index stores 128 px, so one gallery
    # held two sizes depending on how its items arrived
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        photo = phone_sized(Image.open(tar.extractfile("cifar10-jpeg/test/ship/0000.jpg")))
    (tmp_path / "photos" / "ship").mkdir(parents=True)
    photo.save(tmp_path / "photos" / "ship" / "wide.jpg", quality=92)
    served = Settings.model_fields["thumbnail_size"].default
    for args, size in (([], (served, served * 3 // 4)), (["--thumbnail-size", "64"], (64, 48)),
                       (["--thumbnail-size", "0"], None)):
        data = tmp_path / ("data-" + (args[1] if args else "default"))
        assert main(["index", "build", str(tmp_path / "photos"), "--model", str(hybrid1_artifact), "--data",
                     str(data), *args]) == 0
        with Store.open(StoreConfig(data / "index", read_only=True)) as store:
            stored = store.thumbnail("ship/wide.jpg")
        if size is None:
            assert stored is None
            continue
        assert Image.open(io.BytesIO(stored)).size == size, args
        with Image.open(tmp_path / "photos" / "ship" / "wide.jpg") as im:   # what the service's thumbnailer makes
            im.draft(None, (size[0], size[0]))
            assert stored == model.make_thumbnail(im, size[0])
    capsys.readouterr()
    for bad in ("-1", "1025"):
        assert main(["index", "build", str(tmp_path / "photos"), "--model", str(hybrid1_artifact), "--data",
                     str(tmp_path / "bad"), "--thumbnail-size", bad]) == 2
        assert f"--thumbnail-size must be 0 to 1024, got {bad}" in capsys.readouterr().err


def test_cli_user_errors_exit_2_with_one_clear_line(gallery_tar, hybrid1_artifact, tmp_path, capsys):
    import model
    import torch

    data = tmp_path / "data"
    assert main(["index", "stats", "--data", str(data)]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["index", "build", str(tmp_path / "nope"), "--model", str(hybrid1_artifact), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", "build", str(gallery_tar), "--threads", "0", "--data", str(data)]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data)]) == 0
    capsys.readouterr()
    torch.manual_seed(1)  # another model: the store refuses its vectors
    other = model.save_artifact(tmp_path / "other.safetensors", model.create_model("hybrid1", in_chans=3),
                                model.ArtifactMeta(name="other", arch="hybrid1", in_chans=3, image_size=32))
    assert main(["index", "build", str(gallery_tar), "--model", str(other), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "hybrid1-test@" in err and "other@" in err
    with Store.open(StoreConfig(data / "index")):  # as `simsearch serve` holds it
        assert main(["index", "build", str(gallery_tar), "--model", str(hybrid1_artifact), "--data", str(data)]) == 2
        err = capsys.readouterr().err
        # (the holder is this test's process, so the message says "this process")
        assert "open for writing in this process" in err and f"simsearch index upload {gallery_tar} --url" in err


def test_build_on_a_full_disk_stops_with_one_line_and_resumes_once_space_is_freed(hybrid1_artifact, tmp_path,
                                                                                  small_disk):
    """A real full disk (tests/conftest.py's small_disk): the batch that does not fit is not stored, the
    ones before it are, and the same command finishes the job once there is room."""
    import subprocess
    import sys

    from ..conftest import noise_folder

    mount, inside = small_disk
    photos = noise_folder(tmp_path / "photos", 1000, seed=3)
    build = [*inside, str(Path(sys.executable).parent / "simsearch"), "index", "build", str(photos),
             "--data", str(mount / "data"), "--model", str(hybrid1_artifact), "--batch-size", "16"]
    first = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2, first.stdout + first.stderr
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("simsearch index: error: the disk holding the index at") and "is full" in last
    assert "run the same command again" in last and "Traceback" not in first.stderr

    subprocess.run([*inside, "rm", str(mount / "ballast")], check=True)
    second = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already indexed" in second.stdout and "the index holds 1000 items" in second.stdout
    held = int(second.stdout.split(" images in ")[1].split(": ")[1].split(" already")[0])
    assert 0 < held < 1000  # the first run kept what it had committed


def test_check_names_each_damaged_item_and_the_snapshot_and_passes_a_sound_index(gallery_tar, hybrid1_artifact,
                                                                                 tmp_path, capsys):
    """`index check` on real damage, made in the files as a failing disk would: a flipped bit in a vector,
    a cut vector, metadata that is not JSON, a thumbnail of garbage, a truncated snapshot."""
    import sqlite3

    data = tmp_path / "data"
    assert main(["index", "build", str(gallery_tar), "--data", str(data), "--model", str(hybrid1_artifact)]) == 0
    assert main(["index", "check", "--data", str(data), "--thumbnails"]) == 0
    out = capsys.readouterr().out
    assert "ok: checked 24 items (hybrid1-test@" in out and "thumbnails decoded" in out

    db = sqlite3.connect(data / "index" / "store.sqlite3")
    (v,), = db.execute("SELECT vector FROM items WHERE id = 'test/cat/0001.jpg'")
    flipped = bytearray(v)
    flipped[3] ^= 0x40  # the exponent's top bit of the first component: 1e38-scale
    db.execute("UPDATE items SET vector = ? WHERE id = 'test/cat/0001.jpg'", (bytes(flipped),))
    db.execute("UPDATE items SET vector = substr(vector, 1, 100) WHERE id = 'test/dog/0002.jpg'")
    db.execute("UPDATE items SET metadata = '{\"width\": 3' WHERE id = 'test/ship/0003.jpg'")
    db.execute("UPDATE thumbnails SET data = ? WHERE id = 'test/ship/0004.jpg'", (b"\xff\xd8\xff" + bytes(200),))
    db.commit()
    db.close()
    snap = data / "index" / "index.snapshot"
    snap.write_bytes(snap.read_bytes()[:-10])

    assert main(["index", "check", "--data", str(data), "--thumbnails"]) == 1
    out = capsys.readouterr().out
    damaged = [ln for ln in out.splitlines() if ln.startswith("damaged: ")]
    assert len(damaged) == 5, out
    assert "item 'test/cat/0001.jpg': its vector has norm" in out
    assert "item 'test/dog/0002.jpg': its vector has 100 bytes" in out
    assert "item 'test/ship/0003.jpg': its metadata is unreadable" in out
    assert "item 'test/ship/0004.jpg': its thumbnail does not decode" in out
    assert "index.snapshot: truncated" in out and "rebuilds from the database" in out
    assert out.strip().splitlines()[-1].startswith("5 problems in 24 items")


def test_search_with_a_folder_or_tar_of_labelled_queries_reports_each_and_the_label_agreement(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    """Many queries in one run: the gallery's own tar as queries (each finds itself, so its label), the
    broken file skipped with its reason, JSON Lines with --json."""
    data = tmp_path / "data"
    args = ["--data", str(data), "--model", str(hybrid1_artifact)]
    assert main(["index", "build", str(gallery_tar), *args]) == 0
    capsys.readouterr()
    assert main(["search", str(gallery_tar), *args, "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "skipped " in captured.err and "broken.jpg" in captured.err and "1 of 25 queries could not be read" in captured.err
    assert f"{gallery_tar}:test/dog/0003.jpg  (label dog)" in captured.out
    assert captured.out.strip().splitlines()[-1] == \
        "24 of 24 queries with a label (1.000) have a nearest neighbour of that label"

    folder = _extract(gallery_tar, tmp_path / "queries")
    (folder / "test" / "cat" / "broken.jpg").unlink()
    assert main(["search", str(folder / "test"), str(folder / "test" / "cat" / "0001.jpg"), *args,
                 "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 25 and all(len(r["results"]) == 3 for r in lines)
    single = lines[-1]
    assert single["query"].endswith("cat/0001.jpg") and single["label"] is None
    for r in lines[:-1]:  # each labelled by its class folder, each finding itself first
        rel = Path(r["query"]).relative_to(folder / "test").as_posix()
        assert r["label"] == rel.split("/")[0]
        assert r["results"][0]["id"] == f"test/{rel}" and r["results"][0]["distance"] < 1e-3


def test_every_index_command_works_on_a_named_gallery_beside_the_default_one(gallery_tar, hybrid1_artifact, tmp_path,
                                                                             capsys):
    data, model_args = tmp_path / "data", ["--model", str(hybrid1_artifact)]
    folder = _extract(gallery_tar, tmp_path / "src")
    assert main(["index", "build", str(folder / "test" / "ship"), "--data", str(data), *model_args]) == 0
    assert main(["index", "build", str(folder / "test"), "--data", str(data), "--gallery", "pets", *model_args]) == 0
    assert (data / "galleries" / "pets" / "index" / "store.sqlite3").is_file()
    capsys.readouterr()
    for gallery, count in (("default", 8), ("pets", 24)):
        assert main(["index", "stats", "--data", str(data), "--gallery", gallery, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["count"] == count
    query = folder / "test" / "cat" / "0002.jpg"
    assert main(["search", str(query), "--data", str(data), "--gallery", "pets", "-k", "1", *model_args]) == 0
    assert capsys.readouterr().out.split()[-1] == "cat/0002.jpg"
    assert main(["search", str(query), "--data", str(data), "-k", "1", *model_args]) == 0   # ships only
    assert capsys.readouterr().out.split()[-2] == "-"
    assert main(["classify", str(query), "--data", str(data), "--gallery", "pets", *model_args]) == 0
    assert capsys.readouterr().out.startswith("cat  ")
    assert main(["index", "check", "--data", str(data), "--gallery", "pets"]) == 0
    assert "ok: checked 24 items" in capsys.readouterr().out
    for gallery, items in (("pets", 24), ("default", 8)):
        assert main(["index", "duplicates", "--data", str(data), "--gallery", gallery, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["items"] == items
    assert main(["index", "backup", str(tmp_path / "copy"), "--data", str(data), "--gallery", "pets"]) == 0
    assert (tmp_path / "copy" / "galleries" / "pets" / "index" / "store.sqlite3").is_file()
    assert main(["index", "delete", "cat/0002.jpg", "--data", str(data), "--gallery", "pets", "--yes"]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--data", str(data), "--gallery", "pets", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 23
    assert main(["index", "galleries", "--data", str(data), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["count"]) for r in listed] == [("default", 8), ("pets", 23)]
    assert all(r["model_id"].startswith("hybrid1-test@") for r in listed)
    assert main(["index", "galleries", "--data", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["pets", "23"]
    assert main(["index", "galleries", "--data", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.startswith("no galleries in")
    for args in (["index", "stats", "--gallery", "hats"], ["index", "stats", "--gallery", "Hats!"]):
        assert main([*args, "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert ("no index at" in err and "--gallery hats" in err) or "a gallery name is 1 to 63" in err, err


def test_duplicates_finds_a_copy_under_another_label_and_a_re_encoded_copy_and_nothing_else(
        gallery_tar, tmp_path, capsys):
    import model

    folder = _extract(gallery_tar, tmp_path / "photos")
    (folder / "test" / "cat" / "broken.jpg").unlink()
    dog = folder / "test" / "dog" / "0003.jpg"
    (folder / "test" / "cat" / "copy-of-a-dog.jpg").write_bytes(dog.read_bytes())        # the same file, filed twice
    # a photo, and a smaller copy of it as a JPEG, as a phone's share sheet makes one
    photo = Image.open(folder / "test" / "ship" / "0001.jpg").resize((256, 256), Image.Resampling.BICUBIC)
    photo.save(folder / "test" / "ship" / "photo.png")
    photo.resize((192, 192), Image.Resampling.BICUBIC).save(folder / "test" / "ship" / "photo-shared.jpg", quality=75)
    data = tmp_path / "data"
    trained = str(model.default_artifact_path("cifar10"))
    assert main(["index", "build", str(folder), "--model", trained, "--data", str(data)]) == 0
    capsys.readouterr()

    assert main(["index", "duplicates", "--data", str(data), "--min-score", "0.99"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1.0000  test/cat/copy-of-a-dog.jpg (cat)  test/dog/0003.jpg (dog)  labels differ"
    assert lines[1].endswith("  test/ship/photo-shared.jpg (ship)  test/ship/photo.png (ship)")
    assert 0.99 <= float(lines[1].split()[0]) < 1
    assert lines[2:] == ["2 pairs at cosine 0.99 or more among 27 items, 1 of them with different labels"]

    assert main(["index", "duplicates", "--data", str(data), "--min-score", "0.99", "--conflicts", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 27 and report["min_score"] == 0.99
    assert [(p["a"], p["b"], p["label_a"], p["label_b"]) for p in report["pairs"]] == [
        ("test/cat/copy-of-a-dog.jpg", "test/dog/0003.jpg", "cat", "dog")]
    # a lower bar finds more pairs, each once, the most alike first
    assert main(["index", "duplicates", "--data", str(data), "--min-score", "0.5", "--json", "-k", "3"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert len(pairs) > 2 and len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    assert [p["score"] for p in pairs] == sorted((p["score"] for p in pairs), reverse=True)
    assert all(p["a"] < p["b"] and p["score"] >= 0.5 for p in pairs)
    for args, message in [(["--min-score", "0"], "--min-score is a cosine in (0, 1], got 0.0"),
                          (["-k", "0"], "-k must be 1..1000, got 0")]:
        assert main(["index", "duplicates", "--data", str(data), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["index", "duplicates", "--data", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err


def test_without_model_a_gallery_is_searched_and_grown_with_the_bundled_model_that_made_it(
        gallery_tar, hybrid1_artifact, tmp_path, capsys):
    import model

    mnist = model.default_artifact_path("mnist")   # a bundled model that is not the default one
    data = tmp_path / "data"
    images = _extract(gallery_tar, tmp_path / "photos")
    assert main(["index", "build", str(images / "test" / "cat"), "--model", str(mnist), "--data", str(data)]) == 0
    query = images / "test" / "cat" / "0003.jpg"
    capsys.readouterr()
    assert main(["search", str(query), "--data", str(data), "-k", "2", "--json"]) == 0   # no --model
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "0003.jpg" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(["index", "build", str(images / "test"), "--data", str(data)]) == 0   # grown, no --model
    capsys.readouterr()
    assert main(["index", "stats", "--data", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 8 + 24 and stats["model_id"] == model.Embedder.from_file(mnist).model_id

    # made by a model of the user's own: named, with what to pass
    other = tmp_path / "other"
    assert main(["index", "build", str(images / "test" / "cat"), "--model", str(hybrid1_artifact),
                 "--data", str(other)]) == 0
    capsys.readouterr()
    assert main(["search", str(query), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"the index at {other / 'index'} holds vectors of model 'hybrid1-test@" in err
    assert "none of the bundled models: pass that model's artifact with --model" in err
