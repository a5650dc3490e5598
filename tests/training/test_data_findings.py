"""Datasets a user's folder really comes as (the H4 bug hunt): a test split with nothing in it, file names that are
not UTF-8, Train/ and Test/ capitalised, a huge scan, a cache that cannot be written, a CIFAR batch cut short and
digits kept in a folder whose path says "fashion"."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import DatasetError, load_dataset
from training._files import write_whole
from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"   # 3x32x32, any ImageFolder fits it


def _img(path: Path, seed: int, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _folder(root: Path, layout: dict[str, int]) -> Path:
    """`root` holding `layout`'s count of PNGs in each of its folders ({"train/a": 4, "test": 2})."""
    seed = 0
    for folder, n in layout.items():
        for i in range(n):
            seed += 1
            _img(root / folder / f"{i}.png", seed)
    return root


# ---- 1. a test split with no images is refused before any training


def test_a_test_folder_of_loose_images_is_refused_naming_them_before_training(tmp_path):
    data = _folder(tmp_path / "t3", {"train/a": 4, "train/b": 4, "test": 4})
    with pytest.raises(DatasetError) as exc:
        load_dataset(data, use_cache=False)
    assert str(exc.value) == (f"{data}: test/ has no class folders with images in them: test/0.png, test/1.png, "
                              f"test/2.png ... are not in a class folder; put the test images in test/<class>/, "
                              f"or move test/ out to hold a test split out of train/")
    out = tmp_path / "o" / "t3.safetensors"
    r = run_cli("train", str(data), "--out", str(out), "--epochs", "1", "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "test/ has no class folders with images in them" in r.stderr
    assert "Traceback" not in r.stderr and '"epoch"' not in r.stdout
    assert not (out.parent / "t3.safetensors.ckpt").exists()
    r = run_cli("evaluate", str(ARTIFACT), str(data), "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "test/ has no class folders with images in them" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_test_folder_holding_only_other_files_is_refused(tmp_path):
    data = _folder(tmp_path / "d", {"train/a": 3, "train/b": 3})
    (data / "test").mkdir()
    (data / "test" / "README.txt").write_text("test images go here")
    with pytest.raises(DatasetError, match=r"test/ has no class folders with images in them; put the test images"):
        load_dataset(data, use_cache=False)


def test_a_validation_folder_standing_for_test_with_loose_images_is_refused(tmp_path):
    data = _folder(tmp_path / "d", {"train/a": 3, "train/b": 3, "val": 1})
    with pytest.raises(DatasetError, match=r"val/ has no class folders with images in them: val/0.png is not in a "
                                           r"class folder; .* or move val/ out to hold a test split out of train/"):
        load_dataset(data, use_cache=False)


def test_loose_images_in_test_and_in_a_validation_folder_are_listed_as_not_read(tmp_path):
    data = _folder(tmp_path / "d", {"train/a": 3, "train/b": 3, "test/a": 2, "test/b": 2, "test": 1, "val/a": 2,
                                    "val": 1})
    ds = load_dataset(data, use_cache=False)
    assert ds.info["not_read"] == {"test/0.png": "not in a class folder", "val/0.png": "not in a class folder"}
    assert len(ds.test) == 4 and len(ds.val) == 2
    assert f"{data}: not read: test/0.png (not in a class folder), val/0.png (not in a class folder)" in ds.notes()


def test_a_test_folder_none_of_whose_images_decode_is_refused_naming_one(tmp_path):
    data = _folder(tmp_path / "d", {"train/a": 3, "train/b": 3})
    (data / "test" / "a").mkdir(parents=True)
    (data / "test" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"none of the images in test/ could be decoded \(e.g. 'test/a/0.png'\)"):
        load_dataset(data, use_cache=False)


def test_a_dataset_of_one_image_a_class_is_refused_as_nothing_can_be_held_out(tmp_path):
    data = _folder(tmp_path / "ones", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DatasetError) as exc:
        load_dataset(data, use_cache=False)
    assert str(exc.value) == (f"{data}: no class has 2 or more images, so none can be held out to test on: give the "
                              f"classes at least 2 images each, or split them yourself into train/<class>/ and "
                              f"test/<class>/")
    (data / "a" / "1.png").write_bytes(b"")   # two files in a, one of which does not decode
    with pytest.raises(DatasetError, match="no class has 2 or more images that decode"):
        load_dataset(data, use_cache=False)
    r = run_cli("evaluate", str(ARTIFACT), str(data), "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "no class has 2 or more images that decode" in r.stderr


# ---- 2. file names that are not UTF-8


def _latin1(root: Path, *parts: bytes) -> Path:
    return Path(os.fsdecode(os.path.join(os.fsencode(root), *parts)))


def test_file_and_class_names_that_are_not_utf8_are_read_cached_and_shown_escaped(tmp_path):
    data = _folder(tmp_path / "latin", {"a": 3})
    for i in range(3):
        _img(_latin1(data, b"caf\xe9", b"%d.png" % i), 10 + i)
        _img(_latin1(data, b"a", b"cr\xe8me%d.png" % i), 20 + i)
    _latin1(data, b"a", b"bad\xe9.png").write_bytes(b"")
    first = load_dataset(data)
    again = load_dataset(data)   # from the cache, whose key is made from the names
    for ds in (first, again):
        assert ds.class_names == ["a", "caf\\xe9"]
        assert "bad\\xe9.png" in ds.skipped_note()
        names = ds.train.names + ds.test.names
        assert "caf\\xe9/0.png" in names or "caf\\xe9/1.png" in names
        json.dumps(ds.describe(), ensure_ascii=False).encode("utf-8")   # printable, writable
        for name in names:
            name.encode("utf-8")
    out = tmp_path / "o" / "latin.safetensors"
    r = run_cli("train", str(data), "--out", str(out), "--epochs", "1", "--threads", "1", "--quiet",
                cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "a/bad\\xe9.png" in r.stderr + r.stdout and out.exists()


# ---- 4. split folders in any case


def test_train_and_test_folders_are_split_folders_in_any_case_keeping_their_names(tmp_path):
    data = _folder(tmp_path / "caps", {f"{s}/{c}": 3 for s in ("Train", "Test") for c in ("cat", "dog", "bird")})
    _folder(data, {"VALIDATION/cat": 2, "VALIDATION/dog": 2})
    ds = load_dataset(data, use_cache=False)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert (len(ds.train), len(ds.test), len(ds.val)) == (9, 9, 4)
    assert ds.test.names[0] == "Test/bird/0.png" and ds.val.names[0] == "VALIDATION/cat/0.png"
    assert ds.info["test_from"] == "Test/" and ds.info["val_from"] == "VALIDATION/"
    with tarfile.open(tmp_path / "caps.tar", "w") as tar:
        tar.add(data, arcname="caps")
    assert load_dataset(tmp_path / "caps.tar", use_cache=False).class_names == ["bird", "cat", "dog"]


def test_two_split_folders_that_differ_only_in_case_are_refused(tmp_path):
    data = _folder(tmp_path / "d", {"train/a": 2, "train/b": 2, "Train/a": 2, "test/a": 2})
    with pytest.raises(DatasetError, match=r"holds both Train/ and train/; keep one of them"):
        load_dataset(data, use_cache=False)


def test_folders_only_named_like_a_split_stay_classes(tmp_path):
    data = _folder(tmp_path / "d", {"Training/a": 2, "Testing/a": 2})
    assert load_dataset(data, use_cache=False).class_names == ["Testing", "Training"]


# ---- 5. an image over Pillow's pixel limit


def test_an_image_over_pillows_pixel_limit_is_left_out_and_named(tmp_path):
    data = _folder(tmp_path / "bomb", {"a": 3, "b": 3})
    Image.new("1", (20000, 10000)).save(data / "a" / "huge.png")   # 200 megapixels, a few kB
    ds = load_dataset(data, use_cache=False)
    assert len(ds.train) + len(ds.test) == 6
    assert "a/huge.png: DecompressionBombError: Image size (200000000 pixels) exceeds limit" in ds.skipped_note()


# ---- 9. a dataset cache that cannot be written


def test_a_cache_that_cannot_be_written_is_noted_once_and_the_dataset_still_loads(tmp_path, monkeypatch):
    data = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "a-file" / "cache"))
    ds = load_dataset(data)
    assert len(ds.train) + len(ds.test) == 6
    notes = [n for n in ds.notes() if n.startswith("could not cache")]
    assert notes == [f"could not cache the decoded dataset in {tmp_path}/a-file/cache/datasets (Not a directory): it "
                     "will be decoded again next time; set SIMSEARCH_CACHE to a folder that can be written"]
    assert "could not cache" not in json.dumps(ds.describe())
    r = run_cli("evaluate", str(ARTIFACT), str(data), "--threads", "1", cache=tmp_path / "a-file" / "cache")
    assert r.returncode == 0, r.stderr
    assert "could not cache the decoded dataset" in r.stderr + r.stdout


def test_a_file_that_fails_half_written_leaves_no_temporary_file_behind(tmp_path):
    def half(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_whole(tmp_path / "x.safetensors", half)
    assert list(tmp_path.iterdir()) == []


# ---- 12. a CIFAR batch cut short


def test_a_truncated_cifar_batch_is_a_dataset_error_naming_the_file(tmp_path):
    folder = tmp_path / "cif" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = pickle.dumps({"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2})
        (folder / name).write_bytes(raw[: len(raw) // 2] if name == "data_batch_3" else raw)
    with pytest.raises(DatasetError) as exc:
        load_dataset(tmp_path / "cif", use_cache=False)
    assert str(exc.value) == (f"{tmp_path}/cif/cifar-10-batches-py/data_batch_3: not a whole CIFAR batch "
                              "(UnpicklingError: pickle data was truncated); copy it again")
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0]}))
    with pytest.raises(DatasetError, match=r"data_batch_3: holds 4 images but 1 labels; copy it again"):
        load_dataset(tmp_path / "cif", use_cache=False)


# ---- 15. Fashion-MNIST told from the dataset folder's own name


def _idx(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)), "train-labels-idx1-ubyte":
              np.arange(20) % 10, "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(10) % 10}
    for name, a in arrays.items():
        header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
        (folder / (name + ".gz")).write_bytes(gzip.compress(header + a.astype(np.uint8).tobytes()))
    return folder


@pytest.mark.parametrize("where, given, name", [
    ("fashion-stuff/mnist", "fashion-stuff/mnist", "mnist"),     # "fashion" higher up says nothing
    ("fashion-stuff/mnist", "fashion-stuff", "mnist"),            # the folder holding the files is mnist
    ("mine/fashion-mnist", "mine/fashion-mnist", "fashion-mnist"),
    ("data/FashionMNIST/raw", "data/FashionMNIST/raw", "fashion-mnist"),   # torchvision's layout
    ("data/FashionMNIST/raw", "data", "fashion-mnist"),
    ("data/MNIST/raw", "data/MNIST/raw", "mnist"),
])
def test_fashion_mnist_is_told_from_the_dataset_folder_s_own_name(tmp_path, where, given, name):
    _idx(tmp_path / where)
    ds = load_dataset(tmp_path / given, use_cache=False)
    assert ds.name == name
    assert ds.class_names[0] == ("T-shirt/top" if name == "fashion-mnist" else "0")
