"""What a training run and an evaluation say about the data they used: classes not scored, small classes, the
sizes actually trained on, folders and images not read, the folder descended into, a --resume with nothing to
resume, and a second run into the same --out."""
from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from training import DatasetError, load_dataset

from .conftest import run_cli


def _png(rgb, i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (rgb[0], (rgb[1] + 17 * i) % 256, rgb[2])).save(buf, "PNG")
    return buf.getvalue()


def _classes(root, sizes: dict[str, int]):
    for k, (c, n) in enumerate(sizes.items()):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(_png((40 * k % 256, 10, 200 - 30 * k), i))


def test_a_lone_class_folder_with_a_sub_folder_is_named_as_the_class_not_its_sub_folder(tmp_path):
    _classes(tmp_path / "e3", {"ship": 4})
    _classes(tmp_path / "e3" / "ship" / "nested", {"deeper": 2})
    with pytest.raises(DatasetError, match=r"found only 1 class folder \('ship', 6 images, sub-folders included\)"):
        load_dataset(tmp_path / "e3", use_cache=False)


def test_a_lone_folder_of_two_sub_folders_says_it_reads_them_as_the_classes(tmp_path):
    _classes(tmp_path / "e5" / "ship", {"a": 3, "b": 3})
    ds = load_dataset(tmp_path / "e5", use_cache=False)
    assert ds.class_names == ["a", "b"]
    assert (f"{tmp_path / 'e5'}: its only folder, ship/, is read as the dataset root: its 2 sub-folders are the "
            "classes (a, b)") in ds.notes()


def test_an_empty_class_folder_a_loose_image_and_a_test_only_class_are_named(tmp_path):
    _classes(tmp_path / "e1", {"red": 3, "blue": 3})
    (tmp_path / "e1" / "empty class").mkdir()
    (tmp_path / "e1" / "loose.png").write_bytes(_png((1, 2, 3)))
    ds = load_dataset(tmp_path / "e1", use_cache=False)
    assert ds.info["not_read"] == {"empty class/": "no images", "loose.png": "not in a class folder"}
    assert f"{tmp_path / 'e1'}: not read: empty class/ (no images), loose.png (not in a class folder)" in ds.notes()
    assert load_dataset(tmp_path / "e1").notes() == load_dataset(tmp_path / "e1").notes() == ds.notes()  # cached

    _classes(tmp_path / "split" / "train", {"red": 3, "blue": 3})
    _classes(tmp_path / "split" / "test", {"red": 2, "blue": 2, "zebra": 2})
    (tmp_path / "split" / "train" / "empty").mkdir()
    ds = load_dataset(tmp_path / "split", use_cache=False)
    assert ds.info["test_only_classes"] == ["zebra"]
    assert ds.notes() == [f"{tmp_path / 'split'}: not read: train/empty/ (no images)",
                          f"{tmp_path / 'split'}: test/ has 1 class with no training images: zebra "
                          "(scored by retrieval only)"]


def test_classes_with_fewer_than_two_test_images_are_named_as_not_scored():
    from training._evaluate import format_metrics, unscored_classes

    labels = torch.tensor([0, 0, 0, 1, 3, 3])
    got = unscored_classes(labels, ["a", "b", "c", "d"])
    assert got == {"unscored_classes": {"b": "1 test image", "c": "no test image"}, "scored_queries": 5}
    text = format_metrics({"test_size": 6, **got})
    assert text.splitlines()[0] == "6 test images (5 scored; the other 1 is alone in its class)"
    assert ("2 classes not scored (fewer than 2 test images, nothing of the class to find): b (1 test image), "
            "c (no test image)") in text


def test_train_and_evaluate_say_what_was_not_scored_and_record_the_data_used(tmp_path):
    photos = tmp_path / "photos"
    _classes(photos, {"big": 20, "mid": 12, "lone": 1, "pair": 2, "trio": 3})
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(photos), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--threads", "1",
                "--max-train", "20", "--quiet", "--resume", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    # a --resume with no checkpoint says so, and trains from the first epoch
    assert f"no checkpoint {out}.ckpt: starting from the first epoch" in r.stdout
    assert "classes have fewer training images than " in r.stdout and "(smallest: lone 1" in r.stdout
    assert "not scored (fewer than 2 test images, nothing of the class to find): lone (no test image)" in r.stdout
    saved = json.loads(out.with_name("m.metrics.json").read_text())
    metrics, data = saved["metrics"], saved["training"]["dataset"]
    assert metrics["unscored_classes"] == {"lone": "no test image", "pair": "1 test image", "trio": "1 test image"}
    assert metrics["scored_queries"] == metrics["test_size"] - 2
    assert data["dataset_train_size"] > 20 and data["train_size"] + data["val_size"] == 20
    assert sum(c["train"] for c in data["class_counts"].values()) == data["train_size"]
    assert sum(c["val"] for c in data["class_counts"].values()) == data["val_size"]
    assert sum(c["test"] for c in data["class_counts"].values()) == data["test_size"] == metrics["test_size"]
    r = run_cli("evaluate", str(out), str(photos), "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lone (no test image)" in r.stdout and "no ce_loss" not in r.stdout
    _classes(tmp_path / "other", {"x": 4, "y": 4})   # other classes: the CE figures are left out, saying why
    r = run_cli("evaluate", str(out), str(tmp_path / "other"), "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("no ce_loss or ce_accuracy: the model's classifier has 5 classes (big, lone, mid, ...) and this dataset "
            "2 classes (x, y)") in r.stdout and "ce_accuracy " not in r.stdout


def test_a_class_only_the_test_split_has_does_not_break_the_class_balanced_batches(tmp_path):
    # 4 classes in all and 3 in train/: batches of 32 planned as 4 classes x 8 were 3 x 8 = 24 images, which
    # pml's MPerClassSampler refuses (a traceback); planned on the classes train/ holds, 3 x 10
    _classes(tmp_path / "split" / "train", {"red": 12, "blue": 12, "green": 12})
    _classes(tmp_path / "split" / "test", {"red": 3, "blue": 3, "green": 3, "zebra": 3})
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(tmp_path / "split"), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    training = json.loads(out.with_name("m.metrics.json").read_text())["training"]
    assert (training["batch_size_used"], training["m_per_class_used"]) == (30, 10), training


def test_a_second_run_into_the_same_out_is_refused_naming_the_first(tmp_path):
    import os

    from training._trainer import lock_run, unlock_run

    out = tmp_path / "m.safetensors"
    fd = lock_run(out)   # as a run in progress holds it
    try:
        r = run_cli("train", str(tmp_path / "nothing"), "--out", str(out), "--epochs", "1", cache=tmp_path)
        assert r.returncode == 2
        assert f"another run (pid {os.getpid()}) is writing {out}" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        unlock_run(out, fd)
    assert not out.with_name(out.name + ".lock").exists()
    r = run_cli("train", str(tmp_path / "nothing"), "--out", str(out), "--epochs", "1", cache=tmp_path)
    assert "another run" not in r.stderr and "no such file or folder" in r.stderr


def test_a_match_threshold_resting_on_few_queries_says_how_few():
    from training._evaluate import format_metrics, match_thresholds

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(60, 64, generator=g)
    labels = torch.arange(60) % 20   # three of each class, spread at random: the nearest is mostly wrong
    emb[1] = emb[0] + 1e-4   # but two queries find each other, of one class, nearest of all
    labels[1] = labels[0]
    rows = match_thresholds(emb, labels)["match_thresholds"]
    assert rows[0]["max_distance"] is not None and rows[0]["queries"] < 30
    assert rows[0]["queries"] == round(rows[0]["answered"] * 60)
    text = format_metrics({"match_thresholds": rows})
    assert f"rests on {rows[0]['queries']} queries only, too few to trust" in text
