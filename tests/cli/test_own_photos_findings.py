"""What `index build` and `search` say of a user's own photo folder (the own-photos hunt, 51st session): a folder
beside train/ and test/ gets no label, labels that differ only in case, photos without an image ending and a
tar's links named as not read, and damaged EXIF data named in one line."""
from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cli import main
from index import Store, StoreConfig

_rng = np.random.default_rng(0)
DAMAGED_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"   # its first IFD 2 GB past the end, as editors write them


def _jpeg(exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                            **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _write(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_jpeg())
    return root


def _build(source: Path, data: Path, artifact: Path) -> int:
    return main(["index", "build", str(source), "--model", str(artifact), "--data", str(data), "--workers", "1",
                 "--threads", "1", "--no-thumbnails"])


def _labels(data: Path) -> dict[str, str | None]:
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        return {it.id: it.label for it in store.list(0, 1000)}


def test_build_gives_no_label_to_a_folder_beside_train_and_test_and_says_so(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", ["Train/cat/1.jpg", "Train/dog/1.jpg", "TEST/cat/2.jpg", "TEST/dog/2.jpg",
                                          "unlabelled/3.jpg", "extra/sub/4.jpg"])
    assert _build(photos, tmp_path / "data", hybrid1_artifact) == 0
    labels = _labels(tmp_path / "data")
    assert labels["unlabelled/3.jpg"] is None and labels["extra/sub/4.jpg"] is None
    assert labels["Train/cat/1.jpg"] == "cat" and labels["TEST/dog/2.jpg"] == "dog"
    assert (f"{photos}: not labelled: extra/, unlabelled/ (beside train/, only test/ and a validation folder, val/, "
            "valid/ or validation/, are); their images are indexed without a label") in capsys.readouterr().err


def test_build_names_labels_that_differ_only_in_case(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", ["train/Yellow/1.jpg", "train/red/1.jpg", "test/yellow/2.jpg",
                                          "test/red/2.jpg"])
    assert _build(photos, tmp_path / "data", hybrid1_artifact) == 0
    assert (f"{photos}: labels Yellow and yellow differ only in case: they are 2 labels, as `simsearch train` makes "
            "2 classes of them") in capsys.readouterr().err


def test_build_names_photos_without_an_image_ending_and_a_tars_links_as_not_read(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", ["cat/1.jpg", "dog/1.jpg"])
    (photos / "cat" / "IMG_0001").write_bytes(_jpeg())
    (photos / "cat" / "notes.txt").write_text("not an image")
    (photos / "dog" / "link.jpg").symlink_to(photos / "dog" / "1.jpg")
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(photos, "photos")
    assert _build(photos, tmp_path / "data", hybrid1_artifact) == 0
    assert f"{photos}: not read: cat/IMG_0001 (an image without an image ending)\n" in capsys.readouterr().err
    assert _build(tmp_path / "photos.tar", tmp_path / "data-tar", hybrid1_artifact) == 0
    assert (f"{tmp_path / 'photos.tar'}: not read: cat/IMG_0001 (an image without an image ending), dog/link.jpg (a "
            "link in a tar)\n") in capsys.readouterr().err


def test_search_names_a_query_whose_exif_is_damaged_in_one_line(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", ["cat/1.jpg", "dog/1.jpg"])
    assert _build(photos, tmp_path / "data", hybrid1_artifact) == 0
    query = tmp_path / "badexif.jpg"
    query.write_bytes(_jpeg(DAMAGED_EXIF))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw UserWarning would fail the search
        assert main(["search", str(query), "--data", str(tmp_path / "data"), "--model", str(hybrid1_artifact)]) == 0
    out, err = capsys.readouterr()
    assert err == (f"{query}: its EXIF data is damaged (Corrupt EXIF data. Expecting to read 2 bytes but only got 0.)"
                   "; it is used without EXIF orientation\n")
    assert "cat/1.jpg" in out   # searched all the same


def test_build_names_an_image_whose_exif_is_damaged_in_one_line_and_indexes_it(hybrid1_artifact, tmp_path, capsys):
    photos = _write(tmp_path / "photos", ["dog/1.jpg"])
    (photos / "cat").mkdir()
    (photos / "cat" / "bad.jpg").write_bytes(_jpeg(DAMAGED_EXIF))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw UserWarning would make the image a skipped one
        assert main(["index", "build", str(photos), "--model", str(hybrid1_artifact), "--data", str(tmp_path / "d"),
                     "--workers", "1", "--threads", "1", "--exif"]) == 0
    _out, err = capsys.readouterr()
    assert err.count("its EXIF data is damaged") == 1, err
    assert "cat/bad.jpg: its EXIF data is damaged (Corrupt EXIF data." in err and "UserWarning" not in err, err
    assert _labels(tmp_path / "d") == {"cat/bad.jpg": "cat", "dog/1.jpg": "dog"}
