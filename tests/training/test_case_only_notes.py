"""The classes of a split folder that train/ has no images of are named in a note, with the training folder whose
name differs from one only in case (Yellow/ and yellow/: two classes to the reader, one to the person who filed
them): for test/ (tests/training/test_own_photos_findings.py) and as much for a validation folder beside it, whose
classes were added with no word at all."""
from __future__ import annotations

from training import load_dataset

from .test_own_photos_findings import COLOURS, class_folders

YELLOW = (230, 220, 20)


def test_a_validation_folders_classes_with_no_training_images_are_named_with_the_training_folder_in_other_case(
        tmp_path):
    root = tmp_path / "photos"
    class_folders(root, "train", classes={"red": COLOURS["red"], "Yellow": YELLOW})
    class_folders(root, "test", classes={"red": COLOURS["red"], "Yellow": YELLOW})
    class_folders(root, "val", classes={"red": COLOURS["red"], "yellow": YELLOW, "green": COLOURS["green"]})
    ds = load_dataset(root, use_cache=False, progress=False)
    assert ds.info["val_only_classes"] == ["green", "yellow"] and "test_only_classes" not in ds.info
    assert ds.info["case_only"] == {"yellow": "train/Yellow/"}
    assert f"{root}: val/ has 2 classes with no training images: green, yellow (train/Yellow/ differs from " \
           "yellow/ only in case)" in ds.notes()
    assert not [line for line in ds.notes() if "test/" in line]


def test_test_and_validation_folders_each_name_their_own_classes_with_no_training_images(tmp_path):
    root = tmp_path / "photos"
    class_folders(root, "Train", classes={"red": COLOURS["red"], "Yellow": YELLOW, "Blue": COLOURS["blue"]})
    class_folders(root, "Test", classes={"red": COLOURS["red"], "yellow": YELLOW})
    class_folders(root, "Validation", classes={"red": COLOURS["red"], "blue": COLOURS["blue"],
                                               "green": COLOURS["green"]})
    ds = load_dataset(root, use_cache=False, progress=False)
    assert ds.info["case_only"] == {"yellow": "Train/Yellow/", "blue": "Train/Blue/"}
    notes = ds.notes()
    assert f"{root}: Test/ has 1 class with no training images: yellow (scored by retrieval only; Train/Yellow/ " \
           "differs from yellow/ only in case)" in notes
    assert f"{root}: Validation/ has 2 classes with no training images: blue, green (Train/Blue/ differs from " \
           "blue/ only in case)" in notes


def test_a_validation_folders_classes_that_train_has_say_nothing(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "test", "val"):
        class_folders(root, split)
    ds = load_dataset(root, use_cache=False, progress=False)
    assert "val_only_classes" not in ds.info and "case_only" not in ds.info
    assert not [line for line in ds.notes() if "no training images" in line]
