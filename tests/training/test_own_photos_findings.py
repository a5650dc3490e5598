"""What training and evaluation say of a user's own photo folder (the own-photos hunt, 51st session): damaged EXIF
data, photos without an image ending, a tar's links and empty class folders, class folders that differ only in
case, one "not read" line, and `evaluate` decoding the test split alone."""
from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from training import evaluate_artifact, format_metrics, load_dataset


REPO = Path(__file__).resolve().parents[2]
CIFAR_MODEL = REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"   # 3 x 32 x 32, as the folders below
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
DAMAGED_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"   # its first IFD 2 GB past the end, as editors write them


def jpeg(colour, exif: bytes | None = None, shade: int = 0) -> bytes:
    im = Image.new("RGB", (40, 30), tuple(min(255, c + shade) for c in colour))
    im.paste((255, 255, 255), (0, 0, 8, 8))
    out = io.BytesIO()
    im.save(out, "JPEG", **({"exif": exif} if exif else {}))
    return out.getvalue()


def class_folders(root: Path, split: str = "", n: int = 4, classes=COLOURS) -> Path:
    for name, colour in classes.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i:03d}.jpg").write_bytes(jpeg(colour, shade=3 * i))
    return root


def test_an_image_with_damaged_exif_is_used_and_named_in_one_line_without_pillows_warning(tmp_path):
    root = class_folders(tmp_path / "photos")
    (root / "green" / "badexif.jpg").write_bytes(jpeg(COLOURS["green"], DAMAGED_EXIF))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw UserWarning would fail the read
        ds = load_dataset(root, use_cache=False, progress=False)
    names = (ds.train.names or []) + (ds.test.names or [])
    assert "green/badexif.jpg" in names   # used, without EXIF orientation
    said = [line for line in ds.notes() if "EXIF" in line]
    assert said == [f"{root}: 1 image with damaged EXIF data, used without EXIF orientation: green/badexif.jpg "
                    "(Corrupt EXIF data. Expecting to read 2 bytes but only got 0.)"]


def test_photos_without_an_image_ending_are_named_as_not_read_and_other_files_are_not(tmp_path):
    root = class_folders(tmp_path / "photos")
    (root / "blue" / "IMG_0001").write_bytes(jpeg(COLOURS["blue"]))
    (root / "blue" / "tw.jpg_large").write_bytes(jpeg(COLOURS["blue"]))
    (root / "blue" / "notes.txt").write_text("not an image")
    (root / "blue" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    ds = load_dataset(root, use_cache=False, progress=False)
    assert ds.info["not_read"] == {"blue/IMG_0001": "an image without an image ending",
                                   "blue/tw.jpg_large": "an image without an image ending"}
    assert f"{root}: not read: blue/IMG_0001 (an image without an image ending), blue/tw.jpg_large (an image " \
           "without an image ending)" in ds.notes()


def test_a_tar_names_its_links_and_empty_class_folders_as_its_folder_does(tmp_path):
    root = class_folders(tmp_path / "photos")
    (root / "empty").mkdir()
    (root / "red" / "link.jpg").symlink_to(root / "red" / "000.jpg")
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(root, "photos")
    folder = load_dataset(root, use_cache=False, progress=False)
    from_tar = load_dataset(tmp_path / "photos.tar", use_cache=False, progress=False)
    assert folder.info["not_read"] == {"empty/": "no images"}
    assert from_tar.info["not_read"] == {"empty/": "no images", "red/link.jpg": "a link in a tar"}
    assert f"{tmp_path / 'photos.tar'}: not read: empty/ (no images), red/link.jpg (a link in a tar)" \
        in from_tar.notes()


def test_a_test_class_whose_name_differs_only_in_case_names_the_training_folder(tmp_path):
    root = tmp_path / "photos"
    class_folders(root, "train", classes={"red": COLOURS["red"], "Yellow": (230, 220, 20)})
    class_folders(root, "test", classes={"red": COLOURS["red"], "yellow": (230, 220, 20)})
    ds = load_dataset(root, use_cache=False, progress=False)
    assert ds.info["case_only"] == {"yellow": "train/Yellow/"}
    assert f"{root}: test/ has 1 class with no training images: yellow (scored by retrieval only; train/Yellow/ " \
           "differs from yellow/ only in case)" in ds.notes()


def test_folders_beside_train_and_what_the_class_levels_do_not_read_are_one_line(tmp_path):
    root = tmp_path / "photos"
    class_folders(root, "train")
    class_folders(root, "test")
    class_folders(root, "unlabelled", classes={"x": (1, 2, 3)}, n=1)
    (root / "train" / "emptyclass").mkdir()
    notes = [line for line in load_dataset(root, use_cache=False, progress=False).notes() if "not read" in line]
    assert notes == [f"{root}: not read: unlabelled/ (beside train/, only test/ and a validation folder, val/, "
                     "valid/ or validation/, are), train/emptyclass/ (no images)"]


def test_evaluate_decodes_the_training_images_only_for_centre(tmp_path):
    root = tmp_path / "photos"
    class_folders(root, "train")
    class_folders(root, "test")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    said: list[str] = []
    res = evaluate_artifact(CIFAR_MODEL, root, log=said.append, progress=False)
    assert res["dataset"]["test_size"] == 12 and res["dataset"]["train_size"] == 0
    assert res["dataset"]["not_decoded"] == {"train": 13}
    assert not [line for line in said if "broken.jpg" in line]   # train/ was not decoded: nothing said of it
    centred: list[str] = []
    res = evaluate_artifact(CIFAR_MODEL, root, log=centred.append, progress=False, centre=1.0)
    assert res["dataset"]["train_size"] == 12 and "not_decoded" not in res["dataset"]
    assert [line for line in centred if "broken.jpg" in line]


def test_evaluate_reads_a_dataset_without_a_test_folder_whole(tmp_path):
    root = class_folders(tmp_path / "photos", n=5)
    ds = load_dataset(root, use_cache=False, progress=False, test_only=True)
    assert len(ds.train) and len(ds.test) and "not_decoded" not in ds.info


def test_a_test_split_decoded_alone_is_cached_apart_and_a_whole_decoding_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    class_folders(root, "train")
    class_folders(root, "test")
    alone = load_dataset(root, progress=False, test_only=True)
    assert len(alone.train) == 0 and load_dataset(root, progress=False, test_only=True).info["not_decoded"]
    whole = load_dataset(root, progress=False)   # the test split alone is not taken for the whole
    assert len(whole.train) == 12
    assert len(load_dataset(root, progress=False, test_only=True).train) == 12   # the whole, cached, is used


@pytest.mark.parametrize("scored, said", [(35, "the other 1 is alone in its class"),
                                          (34, "the other 2 are alone in their class")])
def test_the_count_of_test_images_alone_in_their_class_agrees_in_number(scored, said):
    text = format_metrics({"test_size": 36, "scored_queries": scored})
    assert said in text


def test_a_dataset_read_whole_for_evaluate_is_cached_as_the_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))
    root = class_folders(tmp_path / "photos", n=5)   # no test/ folder: read whole even for the test split
    load_dataset(root, progress=False, test_only=True)
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir() if p.name.endswith("-test.safetensors")] == []
