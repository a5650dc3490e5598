"""Datasets that cannot be read as one: an archive cut short, a folder holding two datasets."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from training import DatasetError, load_dataset
from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_a_tar_gz_cut_short_is_a_dataset_error(tiny_cifar_folder, tmp_path):
    whole = tmp_path / "photos.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(tiny_cifar_folder, arcname="photos")
    cut = tmp_path / "cut.tar.gz"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError, match="cut.tar.gz: the archive is damaged or cut short"):
        load_dataset(cut, use_cache=False)
    r = run_cli("train", str(cut), "--out", str(tmp_path / "x.safetensors"), "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "the archive is damaged or cut short (EOFError" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_folder_holding_two_datasets_is_refused_saying_what_it_found(tiny_cifar_folder, shared_data, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for split in ("train", "test"):
        (both / split).symlink_to(tiny_cifar_folder / split)
    for f in (shared_data / "mnist").iterdir():
        (both / f.name).symlink_to(f)
    with pytest.raises(DatasetError) as exc:
        load_dataset(both, use_cache=False)
    assert str(exc.value) == (f"{both}: holds 2 datasets, MNIST-style IDX files in the top folder and image class "
                              f"folders (test/, train/); one was expected: pass the folder of one of them, or move "
                              f"the other out")
    # each alone still reads
    assert load_dataset(shared_data / "mnist").layout == "idx"
    assert load_dataset(tiny_cifar_folder).num_classes == 4


def test_a_truncated_dataset_is_not_confused_with_a_bad_image(tmp_path):
    """The per-image skip still applies to one broken image inside a sound archive."""
    from PIL import Image

    buf = tmp_path / "ok.tar"
    with tarfile.open(buf, "w") as tar:
        for split, n in (("train", 4), ("test", 2)):
            for cls in ("a", "b"):
                for i in range(n):
                    png = io.BytesIO()
                    Image.new("RGB", (8, 8), (i * 40, 0, 0) if cls == "a" else (0, i * 40, 0)).save(png, "PNG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i}.png")
                    info.size = len(png.getvalue())
                    tar.addfile(info, io.BytesIO(png.getvalue()))
        info = tarfile.TarInfo("train/a/broken.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    ds = load_dataset(buf, use_cache=False)
    assert len(ds.train) == 8 and ds.info["skipped_images"]["count"] == 1

