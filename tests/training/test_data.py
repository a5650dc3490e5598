"""Dataset readers on the real data and on small files written here in every supported layout."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from training import DatasetError, load_dataset
from training._data import stratified_split

from ..photo_formats import PHONE_FORMATS, SUFFIX, encode_as


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _synthetic_idx(folder, gz: bool, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        _write_idx(folder / (name + (".gz" if gz else "")), arr, gz)
    return arrays


def test_the_real_mnist_and_fashion_idx_files_load_with_their_sizes_means_counts_and_class_names(shared_data):
    mnist = load_dataset(shared_data / "mnist")
    assert mnist.train.images.shape == (60000, 1, 28, 28) and mnist.train.images.dtype == torch.uint8
    assert mnist.test.images.shape == (10000, 1, 28, 28)
    assert abs(mnist.train.images.float().mean().item() / 255 - 0.1307) < 1e-3
    assert torch.bincount(mnist.train.labels).tolist()[:2] == [5923, 6742]
    fashion = load_dataset(shared_data / "fashion-mnist")
    assert fashion.name == "fashion-mnist" and fashion.class_names[0] == "T-shirt/top"
    assert torch.bincount(fashion.test.labels).tolist() == [1000] * 10


@pytest.mark.slow
def test_the_real_cifar10_jpeg_tar_loads_as_an_imagefolder_of_ten_classes_of_5000_and_1000(shared_data):
    ds = load_dataset(shared_data / "cifar10-jpeg.tar")
    assert ds.layout == "imagefolder"
    assert ds.train.images.shape == (50000, 3, 32, 32) and len(ds.test) == 10000
    assert ds.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10
    assert 0.4 < ds.train.images.float().mean().item() / 255 < 0.55


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_gzipped_or_not_load_pixel_for_pixel_with_digit_class_names(tmp_path, gz):
    arrays = _synthetic_idx(tmp_path / "digits", gz)
    ds = load_dataset(tmp_path / "digits")
    assert ds.layout == "idx" and ds.class_names == [str(i) for i in range(10)]
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)))
    assert ds.test.labels.tolist() == list(arrays["t10k-labels-idx1-ubyte"])


def test_idx_in_torchvision_raw_layout_inside_a_tar(tmp_path):
    _synthetic_idx(tmp_path / "src" / "MNIST" / "raw", gz=False)
    with tarfile.open(tmp_path / "mnist.tar", "w") as tar:
        tar.add(tmp_path / "src" / "MNIST", arcname="MNIST")
    ds = load_dataset(tmp_path / "mnist.tar")
    assert len(ds.train) == 30 and len(ds.test) == 10


def test_a_truncated_or_foreign_idx_file_is_named_with_what_is_wrong(tmp_path):
    _synthetic_idx(tmp_path / "d", gz=False)
    data = (tmp_path / "d" / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "d" / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match=r"d/t10k-images-idx3-ubyte: the IDX file is truncated: its header says "
                                           r"\[10, 28, 28\], it holds 7740 values"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "t10k-images-idx3-ubyte").write_bytes(b"\x89PNG" + data[4:])   # another kind of file
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: not an IDX file of unsigned bytes \(it starts "
                                           r"with 89 50 4e 47"):
        load_dataset(tmp_path / "d")
    _synthetic_idx(tmp_path / "d", gz=False, n_test=9)   # labels of another size than the images
    _write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.arange(10) % 10, gz=False)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte holds 9 images but t10k-labels-idx1-ubyte 10 labels"):
        load_dataset(tmp_path / "d")
    _synthetic_idx(tmp_path / "z", gz=True)
    gz = (tmp_path / "z" / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "z" / "train-labels-idx1-ubyte.gz").write_bytes(gz[:len(gz) // 2])   # a cut-off download
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz: not a whole gzip file"):
        load_dataset(tmp_path / "z")


def test_cifar_python_batches_load_channel_major_rows_found_from_the_parent_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        images[name] = data
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": [0, 1, 2, 3]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c", "d"]}))
    ds = load_dataset(tmp_path)  # the parent folder is found too
    assert ds.layout == "cifar-batches" and ds.class_names == ["a", "b", "c", "d"]
    assert ds.train.images.shape == (20, 3, 32, 32) and len(ds.test) == 4
    # CIFAR rows are channel-major 1024 R, 1024 G, 1024 B values
    assert torch.equal(ds.test.images[2].flatten(), torch.from_numpy(images["test_batch"][2]))
    assert ds.train.labels.tolist() == [0, 1, 2, 3] * 5


def _png(color, size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _image_tree(root, with_splits: bool):
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for c, rgb in colours.items():
        for i in range(5):
            sub = (root / ("train" if i < 4 else "test") / c) if with_splits else (root / c)
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}.png").write_bytes(_png(rgb))
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored


def test_an_imagefolder_with_train_and_test_loads_sorted_class_names_and_each_split_s_pixels(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=True)
    ds = load_dataset(tmp_path / "photos")
    assert ds.class_names == ["blue", "green", "red"]
    assert ds.train.images.shape == (12, 3, 32, 32) and len(ds.test) == 3
    red = ds.train.images[ds.train.labels == 2]
    assert (red[:, 0] == 255).all() and (red[:, 1] == 0).all()


@pytest.mark.parametrize("val_dir", ["val", "valid", "validation"])
def test_a_validation_folder_beside_train_and_test_is_the_validation_split_also_from_the_cache(
        tmp_path, monkeypatch, val_dir):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))
    _image_tree(tmp_path / "photos", with_splits=True)
    for c, rgb in {"red": (255, 0, 0), "blue": (0, 0, 255)}.items():   # no green in it: a class may lack one
        (tmp_path / "photos" / val_dir / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "photos" / val_dir / c / f"v{i}.png").write_bytes(_png(rgb))
    for ds in (load_dataset(tmp_path / "photos"), load_dataset(tmp_path / "photos")):   # decoded, then cached
        assert ds.class_names == ["blue", "green", "red"] and len(ds.train) == 12 and len(ds.test) == 3
        assert ds.val.names == [f"{val_dir}/blue/v0.png", f"{val_dir}/blue/v1.png", f"{val_dir}/red/v0.png",
                                f"{val_dir}/red/v1.png"]
        assert ds.val.labels.tolist() == [0, 0, 2, 2] and (ds.val.images[2:, 0] == 255).all()
        assert ds.describe()["val_size"] == 4 and ds.info["val_from"] == f"{val_dir}/"
    assert load_dataset(tmp_path / "photos", in_chans=1).val.images.shape == (4, 1, 32, 32)
    other = tmp_path / "photos" / ("valid" if val_dir != "valid" else "val") / "red"   # a second validation folder
    other.mkdir(parents=True)
    (other / "x.png").write_bytes(_png((255, 0, 0)))
    with pytest.raises(DatasetError, match="keep one validation folder"):
        load_dataset(tmp_path / "photos", use_cache=False)


def test_folders_beside_train_and_test_that_are_not_read_are_named(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=True)
    for extra in ("unlabelled", "extra"):
        (tmp_path / "photos" / extra / "red").mkdir(parents=True)
        (tmp_path / "photos" / extra / "red" / "x.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "photos" / "notes").mkdir()
    (tmp_path / "photos" / "notes" / "readme.txt").write_text("no images here")   # not named: nothing to read
    ds = load_dataset(tmp_path / "photos", use_cache=False)
    assert len(ds.train) == 12 and len(ds.test) == 3 and ds.info["ignored_folders"] == ["extra", "unlabelled"]
    assert ds.notes() == [f"{tmp_path / 'photos'}: not read: extra/, unlabelled/ (beside train/, only test/ and a "
                          "validation folder, val/, valid/ or validation/, are)"]
    assert load_dataset(tmp_path / "photos").notes() == ds.notes()   # from the cache too
    clean = tmp_path / "clean"
    _image_tree(clean, with_splits=True)
    assert load_dataset(clean, use_cache=False).notes() == []


def test_train_alone_reads_its_class_folders_with_a_test_split_drawn_from_them(tmp_path):
    _image_tree(tmp_path / "photos" / "train", with_splits=False)
    ds = load_dataset(tmp_path / "photos", use_cache=False)
    assert ds.class_names == ["blue", "green", "red"] and len(ds.train) == 9 and len(ds.test) == 6
    assert sorted(ds.train.names + ds.test.names)[:2] == ["blue/0.png", "blue/1.png"]   # a lone top folder is entered


def test_train_and_val_alone_read_val_as_the_test_split(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=True)
    (tmp_path / "photos" / "test").rename(tmp_path / "photos" / "val")
    ds = load_dataset(tmp_path / "photos", use_cache=False)
    assert len(ds.train) == 12 and len(ds.test) == 3 and ds.val is None and ds.info["test_from"] == "val/"


def test_imagefolder_without_splits_gets_a_seeded_stratified_test_split(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=False)
    a = load_dataset(tmp_path / "photos", test_fraction=0.2, split_seed=3, use_cache=False)
    b = load_dataset(tmp_path / "photos", test_fraction=0.2, split_seed=3)
    # 0.2 of 5 is 1, but a class's test images must find one another: 2 of each
    assert len(a.train) == 9 and torch.bincount(a.test.labels).tolist() == [2, 2, 2]
    assert torch.equal(a.train.images, b.train.images)
    grey = load_dataset(tmp_path / "photos", in_chans=1, image_size=16)
    assert grey.train.images.shape == (9, 1, 16, 16)


def test_imagefolder_of_phone_photos_reads_heic_avif_and_mpo(tmp_path):
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    for c, rgb in colours.items():
        for i, fmt in enumerate([*PHONE_FORMATS, "JPEG"]):
            sub = tmp_path / "photos" / ("train" if i < 3 else "test") / c
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}{SUFFIX[fmt]}").write_bytes(encode_as(Image.new("RGB", (64, 48), rgb), fmt))
    ds = load_dataset(tmp_path / "photos", use_cache=False)
    assert ds.class_names == ["blue", "green", "red"] and len(ds.train) == 9 and len(ds.test) == 3
    for split in (ds.train, ds.test):
        for label, c in enumerate(ds.class_names):
            mean = split.images[split.labels == label].float().mean(dim=(0, 2, 3))
            assert (mean - torch.tensor(colours[c], dtype=torch.float)).abs().max() < 12, (c, mean)


def test_an_imagefolder_made_of_links_to_class_folders_reads_their_images(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=True)
    split = tmp_path / "linked"  # a split laid out with links, as data-prep scripts often do
    for part in ("train", "test"):
        (split / part).mkdir(parents=True)
        for c in ("red", "blue"):
            (split / part / c).symlink_to(tmp_path / "photos" / part / c)
    ds = load_dataset(split, use_cache=False)
    assert ds.class_names == ["blue", "red"] and len(ds.train) == 8 and len(ds.test) == 2
    assert ds.test.names == ["test/blue/4.png", "test/red/4.png"]


def test_an_imagefolder_does_not_go_up_a_link_to_a_folder_it_lies_in(tmp_path):
    _image_tree(tmp_path / "all", with_splits=False)
    root = tmp_path / "all" / "red"   # read on its own, red/ is a folder of class folders
    for c in ("light", "dark"):
        (root / c).mkdir()
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(_png((255, 0, 0)))
    (root / "light" / "loop").symlink_to("../..")   # back to all/, which holds green/ and blue/
    ds = load_dataset(root, use_cache=False)
    assert ds.class_names == ["dark", "light"] and len(ds.train) + len(ds.test) == 6


def test_tar_of_an_imagefolder_and_the_cache(tmp_path, monkeypatch):
    _image_tree(tmp_path / "tree" / "shapes", with_splits=True)
    with tarfile.open(tmp_path / "shapes.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree" / "shapes", arcname="shapes")
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(tmp_path / "shapes.tar.gz")
    assert ds.class_names == ["blue", "green", "red"] and len(ds.train) == 12
    assert len(list((tmp_path / "cache" / "datasets").glob("*.safetensors"))) == 1
    again = load_dataset(tmp_path / "shapes.tar.gz")
    assert torch.equal(again.test.images, ds.test.images) and again.class_names == ds.class_names
    # each image's file within the dataset, in the images' order, also when read from the cache
    assert ds.test.names == ["test/blue/4.png", "test/green/4.png", "test/red/4.png"]
    assert again.train.names == ds.train.names and len(ds.train.names) == 12
    assert ds.train.subset([5, 0]).names == [ds.train.names[5], ds.train.names[0]]


def test_a_tar_made_inside_a_folder_reads_the_classes_images_and_notes_that_folder_reads(tmp_path):
    src = tmp_path / "src"
    _image_tree(src, with_splits=False)   # blue/, green/, red/ and a .DS_Store
    (src / ".thumbs").mkdir()   # a photo viewer's thumbnails: hidden, no class
    for i in range(3):
        (src / ".thumbs" / f"{i}.png").write_bytes(_png((9, 9, 9)))
    (src / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")   # macOS's file beside a copied 0.png
    (src / "loose.png").write_bytes(_png((1, 2, 3)))   # in no class folder
    os.link(src / "red" / "0.png", src / "red" / "again.png")   # the tar holds one of the two as a hard link
    subprocess.run(["tar", "cf", str(tmp_path / "src.tar"), "-C", str(src), "."], check=True)
    with tarfile.open(tmp_path / "src.tar") as made:
        members = made.getmembers()
    assert {"./.thumbs/0.png", "./._0.png"} <= {m.name for m in members} and any(m.islnk() for m in members)
    folder, tar = (load_dataset(path, use_cache=False) for path in (src, tmp_path / "src.tar"))
    assert tar.class_names == folder.class_names == ["blue", "green", "red"]
    assert tar.info["not_read"] == folder.info["not_read"] == {"loose.png": "not in a class folder"}
    assert sorted(tar.train.names + tar.test.names) == sorted(folder.train.names + folder.test.names)
    assert len(tar.train) + len(tar.test) == 16


def test_files_are_named_in_a_split_made_from_one_folder_and_not_for_idx(tmp_path, shared_data):
    _image_tree(tmp_path / "photos", with_splits=False)
    ds = load_dataset(tmp_path / "photos", test_fraction=0.2, split_seed=3, use_cache=False)
    for split in (ds.train, ds.test):
        assert [ds.class_names[y] for y in split.labels.tolist()] == [n.split("/")[0] for n in split.names]
    assert sorted(ds.train.names + ds.test.names) == sorted(f"{c}/{i}.png" for c in ("blue", "green", "red")
                                                            for i in range(5))
    assert load_dataset(shared_data / "mnist").test.names is None


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a dataset layout.*IDX.*ImageFolder"):
        load_dataset(tmp_path / "notes")
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "x.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(DatasetError, match=r"one: found one class \('only', 1 image\); need at least 2"):
        load_dataset(tmp_path / "one")   # one class folder: descended into, its images are that class
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "flat" / "y.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(DatasetError, match="found images but no class folders"):
        load_dataset(tmp_path / "flat")
    for split in ("train", "test"):
        (tmp_path / "single" / split / "only").mkdir(parents=True)
        (tmp_path / "single" / split / "only" / "x.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(DatasetError, match="only 1 class"):
        load_dataset(tmp_path / "single")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "b").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken" / "b" / "y.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(DatasetError, match=r"only 1 class folder \(\['b'\]\) has images that decode "
                                           r"\(1 do not, e.g. 'a/x.jpg'\)"):
        load_dataset(tmp_path / "broken")
    (tmp_path / "broken" / "b" / "y.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"none of its 2 images could be decoded \(e.g. 'a/x.jpg': "
                                           r"UnidentifiedImageError"):
        load_dataset(tmp_path / "broken")


def test_images_that_do_not_decode_are_left_out_named_and_the_rest_keep_their_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))
    _image_tree(tmp_path / "photos", with_splits=True)
    (tmp_path / "photos" / "train" / "red" / "empty.jpg").write_bytes(b"")       # an interrupted copy
    (tmp_path / "photos" / "test" / "blue" / "cut.png").write_bytes(_png((0, 0, 255))[:60])  # truncated
    (tmp_path / "photos" / "train" / "grey").mkdir()
    (tmp_path / "photos" / "train" / "grey" / "0.jpg").write_bytes(b"\xff\xd8\xff junk")  # its only image
    for cached in (False, True):  # the second read comes from the cache, and says the same
        ds = load_dataset(tmp_path / "photos")
        assert ds.class_names == ["blue", "green", "red"]  # "grey" has nothing that decodes: not a class
        assert len(ds.train) == 12 and len(ds.test) == 3
        for split in (ds.train, ds.test):
            assert [ds.class_names[y] for y in split.labels.tolist()] == [n.split("/")[1] for n in split.names]
            assert not any("empty" in n or "cut" in n for n in split.names)
        red = ds.train.images[ds.train.labels == 2]
        assert (red[:, 0] == 255).all() and (red[:, 1] == 0).all()
        skipped = ds.describe()["skipped_images"]
        assert skipped["count"] == 3
        assert [f.split(":")[0] for f in skipped["first"]] == ["test/blue/cut.png", "train/grey/0.jpg",
                                                                "train/red/empty.jpg"]
        assert "UnidentifiedImageError" in skipped["first"][2]
        note = ds.skipped_note()
        assert note.startswith(f"{tmp_path / 'photos'}: left out 3 images that could not be decoded: "
                               "test/blue/cut.png: ")
        assert "metrics file" not in note  # all three are on the line itself
    assert len(list((tmp_path / "cache" / "datasets").glob("*.safetensors"))) == 1
    assert load_dataset(tmp_path / "photos", image_size=16).skipped_note() is not None
    clean = tmp_path / "clean"
    _image_tree(clean, with_splits=True)
    assert load_dataset(clean).skipped_note() is None and "skipped_images" not in load_dataset(clean).describe()


def test_only_the_first_twenty_undecodable_images_are_named_and_all_are_counted(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=False)
    for i in range(25):
        (tmp_path / "photos" / "red" / f"bad{i:02d}.jpg").write_bytes(b"nope")
    ds = load_dataset(tmp_path / "photos", use_cache=False)
    assert len(ds.train) + len(ds.test) == 15
    assert ds.info["skipped_images"]["count"] == 25 and len(ds.info["skipped_images"]["first"]) == 20
    assert ds.skipped_note().endswith("... (the first 20 named in the metrics file)")


def test_two_datasets_in_one_folder_is_ambiguous(tmp_path):
    _synthetic_idx(tmp_path / "all" / "mnist", gz=True)
    _synthetic_idx(tmp_path / "all" / "fashion-mnist", gz=True)
    with pytest.raises(DatasetError, match="holds 2 IDX datasets"):
        load_dataset(tmp_path / "all")


def test_stratified_split_holds_out_each_class():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5, 3, 2]
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 100
    assert torch.equal(stratified_split(labels, 0.1, seed=0)[1], held)
    assert not torch.equal(stratified_split(labels, 0.1, seed=1)[1], held)


def test_a_small_class_has_two_held_out_so_retrieval_among_them_finds_a_match_and_two_kept():
    # 10% of 12, 5, 4, 3, 2 and 1: 1, 0, 0, 0, 0, 0 by the fraction alone
    labels = torch.tensor([0] * 12 + [1] * 5 + [2] * 4 + [3] * 3 + [4] * 2 + [5])
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[held], minlength=6).tolist() == [2, 2, 2, 1, 1, 0]
    assert torch.bincount(labels[keep], minlength=6).tolist() == [10, 3, 2, 2, 1, 1]
    # and a large fraction still keeps two of a class
    keep, held = stratified_split(labels, 0.9, seed=0)
    assert torch.bincount(labels[keep], minlength=6).tolist() == [2, 2, 2, 1, 1, 1]


def test_a_stratified_subset_of_at_most_m_images_holds_exactly_m_and_each_class_its_share():
    # MNIST's test and train class sizes: --max-test 200 and --max-train 300 kept 201 and 301 (per-class rounding)
    for sizes, m in (([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], 200),
                     ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], 300)):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        keep, held = stratified_split(labels, 1 - m / len(labels), seed=0)
        assert len(keep) == m and len(keep) + len(held) == len(labels)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sizes = rng.integers(10, 60, size=rng.integers(2, 9)).tolist()
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
        for m in range(2 * len(sizes) + 8, len(labels) - 2 * len(sizes) - 8, 7):
            keep, held = stratified_split(labels, 1 - m / len(labels), seed=1)
            assert len(keep) == m, (sizes, m)
            want = np.array(sizes) * m / len(labels)
            if (want >= 3).all() and (np.array(sizes) - want >= 3).all():   # no class at its 2 kept or held
                share = torch.bincount(labels[keep], minlength=len(sizes)).numpy() - want
                assert (np.abs(share) < 1).all(), (sizes, m, share)


def test_an_empty_file_or_one_that_is_no_image_is_named_in_words_without_a_memory_address(tmp_path):
    _image_tree(tmp_path / "photos", with_splits=True)
    (tmp_path / "photos" / "train" / "red" / "empty.jpg").write_bytes(b"")
    (tmp_path / "photos" / "train" / "red" / "notes.png").write_bytes(b"shopping list")
    first = load_dataset(tmp_path / "photos", use_cache=False).describe()["skipped_images"]["first"]
    assert first == ["train/red/empty.jpg: UnidentifiedImageError: empty file (0 bytes)",
                     "train/red/notes.png: UnidentifiedImageError: not an image Pillow can read (13 bytes)"]


@pytest.mark.parametrize("name, maker", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_a_download_that_fails_leaves_no_empty_dataset_folder_behind(tmp_path, monkeypatch, name, maker):
    """--download without a network: the error, and no folder that a later run would take for the dataset."""
    from torchvision import datasets

    from training import download_dataset

    monkeypatch.setattr(getattr(datasets, maker), "mirrors", ["http://127.0.0.1:9/"])   # refused at once, offline
    (tmp_path / "mine.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="Error downloading"):
        download_dataset(name, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
