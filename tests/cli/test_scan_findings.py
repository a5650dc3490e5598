"""How `index build`, `search` and `index upload` read a folder or tar of images (cli/_galleries.scan): names that
are not UTF-8, split folders in any case, a folder wrapped in another, tars cut short or of absolute names."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import main
from index import Store, StoreConfig

_rng = np.random.default_rng(0)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png())
    return root


def _build(source: Path, data: Path, artifact: Path, *more: str) -> int:
    return main(["index", "build", str(source), "--model", str(artifact), "--data", str(data), "--workers", "1",
                 "--threads", "1", *more])


def _items(data: Path) -> dict[str, str | None]:
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        return {it.id: it.label for it in store.list(0, 1000)}


LATIN1 = os.fsdecode(b"caf\xe9.png")   # a Latin-1 name, as an old zip or an SMB share leaves it: not UTF-8


def test_build_indexes_a_file_whose_name_is_not_utf8_under_a_readable_id_and_every_image_after_it(
        hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", [f"{c}/{i}.png" for c in "ab" for i in range(3)] + [f"a/{LATIN1}"])
    data = tmp_path / "data"
    # batches of 2: the store took the batches before the bad name, then stopped there for good
    assert _build(photos, data, hybrid1_artifact, "--batch-size", "2") == 0
    out, err = capsys.readouterr()
    assert (f"{photos}: 1 file name is not UTF-8 or holds what an id cannot (a control character, white space at "
            "an end); its id writes each such byte or character as \\xNN: a/caf\\xe9.png") in err
    assert "indexed 7 images (0 skipped)" in out
    items = _items(data)
    assert len(items) == 7 and items["a/caf\\xe9.png"] == "a" and items["b/2.png"] == "b"
    assert _build(photos, data, hybrid1_artifact) == 0      # a rerun finds it indexed under the same id
    assert "7 already indexed, 0 to embed" in capsys.readouterr().out
    # a tar keeps the bytes of such a name as they are: the same id
    with tarfile.open(tmp_path / "photos.tar", "w") as tf:
        tf.add(photos, arcname="photos")
    assert _build(tmp_path / "photos.tar", tmp_path / "data-tar", hybrid1_artifact) == 0
    assert _items(tmp_path / "data-tar") == items
    # search reads it as a query by that name (the image itself is its nearest neighbour)
    capsys.readouterr()
    assert main(["search", str(photos), "--data", str(data), "--model", str(hybrid1_artifact), "-k", "1"]) == 0
    assert f"{photos}/a/caf\\xe9.png  (label a)\n  1  1.0000  d=0.0000  a            a/caf\\xe9.png\n" in \
        capsys.readouterr().out


def test_a_name_that_written_readably_is_another_files_is_left_out_and_named(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", [f"a/{LATIN1}", "a/caf\\xe9.png", "b/1.png"])
    assert _build(photos, tmp_path / "data", hybrid1_artifact) == 0
    err = capsys.readouterr().err
    assert "skipped a/caf\\xe9.png: its name is not UTF-8 or holds what an id cannot, and written readably it is " \
        "another file's name" in err
    assert "white space at an end);" not in err   # no other such name is stored
    assert _items(tmp_path / "data") == {"a/caf\\xe9.png": "a", "b/1.png": "b"}


def test_build_reads_train_and_test_folders_named_in_any_case_as_splits(hybrid1_artifact, tmp_path):
    caps = _write(tmp_path / "caps", [f"{s}/{c}/0.png" for s in ("Train", "TEST") for c in ("cat", "dog")] +
                  ["Validation/cat/1.png", "Train/loose.png"])
    assert _build(caps, tmp_path / "data", hybrid1_artifact) == 0
    assert _items(tmp_path / "data") == {"Train/cat/0.png": "cat", "Train/dog/0.png": "dog", "TEST/cat/0.png": "cat",
                                         "TEST/dog/0.png": "dog", "Validation/cat/1.png": "cat",
                                         "Train/loose.png": None}


def test_build_refuses_train_beside_Train_as_train_does(hybrid1_artifact, tmp_path, capsys):
    both = _write(tmp_path / "both", [f"{s}/{c}/0.png" for s in ("Train", "train", "test") for c in ("a", "b")])
    assert _build(both, tmp_path / "data", hybrid1_artifact) == 2
    assert "holds both Train/ and train/" in capsys.readouterr().err


def test_build_labels_a_wrapped_folder_by_the_classes_train_reads_in_it_and_keeps_the_ids(hybrid1_artifact,
                                                                                          tmp_path):
    from training import load_dataset

    wrap = _write(tmp_path / "wrap", ["pics/cats/0.png", "pics/cats/1.png", "pics/dogs/0.png", "pics/top.png"])
    (wrap / "pics" / "notes.txt").write_text("not an image, in the wrapper too")
    want = {"pics/cats/0.png": "cats", "pics/cats/1.png": "cats", "pics/dogs/0.png": "dogs", "pics/top.png": None}
    assert _build(wrap, tmp_path / "data", hybrid1_artifact) == 0
    assert _items(tmp_path / "data") == want
    assert load_dataset(wrap, use_cache=False).class_names == ["cats", "dogs"]   # as `simsearch train` reads it
    with tarfile.open(tmp_path / "wrap.tar", "w") as tf:                        # tar cf wrap.tar wrap
        tf.add(wrap, arcname="wrap")
    assert _build(tmp_path / "wrap.tar", tmp_path / "data-tar", hybrid1_artifact) == 0
    assert _items(tmp_path / "data-tar") == want
    # where training finds no classes in the wrapper (one class beside loose images: it refuses), the folder
    # under SOURCE stays the label; a file beside the wrapper keeps it from being one
    one = _write(tmp_path / "one", ["pics/cats/0.png", "pics/top.png"])
    assert _build(one, tmp_path / "data-one", hybrid1_artifact) == 0
    assert _items(tmp_path / "data-one") == {"pics/cats/0.png": "pics", "pics/top.png": "pics"}
    (wrap / "README").write_text("beside pics/")
    assert _build(wrap, tmp_path / "data-readme", hybrid1_artifact) == 0
    assert set(_items(tmp_path / "data-readme").values()) == {"pics"}


@pytest.mark.parametrize("command", ["build", "search"])
def test_a_tar_cut_short_is_named_in_one_line_as_train_names_it(hybrid1_artifact, tmp_path, capsys, command):
    photos = _write(tmp_path / "photos", [f"{c}/{i}.png" for c in "ab" for i in range(4)])
    for name, mode in (("p.tar", "w"), ("p.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tf:
            tf.add(photos, arcname="photos")
    whole = (tmp_path / "p.tar").read_bytes()
    with tarfile.open(tmp_path / "p.tar") as tf:
        last = max((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.offset_data)
    cut = {"headers.tar": whole[:len(whole) // 2], "member.tar": whole[:last.offset_data + 10],   # in its last image
           "cut.tar.gz": (tmp_path / "p.tar.gz").read_bytes()[:600]}
    for name, data in cut.items():
        (tmp_path / name).write_bytes(data)
        args = ["index", "build", str(tmp_path / name), "--data", str(tmp_path / "d"), "--workers", "1"] \
            if command == "build" else ["search", str(tmp_path / name), "--data", str(tmp_path / "d")]
        assert main([*args, "--model", str(hybrid1_artifact)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"simsearch {'index' if command == 'build' else 'search'}: error: {tmp_path / name}: "
                              "the archive is damaged or cut short (") and err.endswith("); copy it again"), err


def test_a_tar_of_absolute_names_gives_the_ids_and_labels_a_tar_made_by_gnu_tar_gives(hybrid1_artifact, tmp_path):
    with tarfile.open(tmp_path / "abs.tar", "w") as tf:
        for name in ("/abs/a/0.png", "/abs/a/1.png", "/abs/b/0.png"):
            data = _png()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert _build(tmp_path / "abs.tar", tmp_path / "data", hybrid1_artifact) == 0
    assert _items(tmp_path / "data") == {"a/0.png": "a", "a/1.png": "a", "b/0.png": "b"}


def test_upload_sends_a_file_whose_name_is_not_utf8_under_the_id_build_gives_it(hybrid1_artifact, tmp_path, capsys):
    import httpx

    from tests.app.conftest import start_server, stop_server

    photos = _write(tmp_path / "photos", [f"a/{LATIN1}", "a/0.png", "b/0.png"])
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "d"),
                           "SIMSEARCH_API_KEY": "k", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        assert main(["index", "upload", str(photos), "--url", server.url, "--api-key", "k"]) == 0
        assert "uploaded 3 images (0 rejected by the service)" in capsys.readouterr().out
        items = httpx.get(server.url + "/index", params={"limit": 10}).json()["items"]
    finally:
        stop_server(server)
    assert {it["id"]: it["label"] for it in items} == {"a/caf\\xe9.png": "a", "a/0.png": "a", "b/0.png": "b"}
