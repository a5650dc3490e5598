"""The trainer's answers to findings of a bug hunt: a pair loss's batch holds two classes, --resume refuses other data
but not other runtime or scoring settings, and --max-train/--max-test say when they keep more images than asked."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training import preset, train

TINY = dict(epochs=2, model="cnn3a", augment=False, val_fraction=0.0, threads=1)


def _logged(cfg, data, out: Path, **kwargs) -> tuple[object, list[str]]:
    lines: list[str] = []
    result = train(cfg, data, out, progress=False, log=lines.append, **kwargs)
    return result, lines


def _epochs(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith('{"epoch"')]


@pytest.mark.parametrize("loss", ["ms", "triplet"])
def test_a_batch_too_small_for_m_per_class_holds_two_classes_and_a_pair_loss_learns(tiny_cifar_folder, tmp_path, loss):
    # batch 10 of m_per_class=8 was one class of 8: no negative pair, a loss of 0, nothing learnt
    result, lines = _logged(preset("default", **TINY, loss=loss, batch_size=10), tiny_cifar_folder,
                            tmp_path / "a.safetensors")
    assert any("batch size 10 would hold one class of m_per_class=8" in line and "5 images of each class instead, "
               "2 classes a batch" in line for line in lines), lines
    assert any("batch 10 = 2 classes x 5" in line for line in lines), lines
    assert all(e["train_loss"] > 0 for e in _epochs(lines)), lines
    assert result.metrics  # the run finished


def test_a_batch_big_enough_for_two_classes_keeps_m_per_class_and_says_nothing(tiny_cifar_folder, tmp_path):
    _, lines = _logged(preset("default", **{**TINY, "epochs": 1}, loss="ms", batch_size=16), tiny_cifar_folder,
                       tmp_path / "a.safetensors")
    assert any("batch 16 = 2 classes x 8" in line for line in lines), lines
    assert not any("would hold one class" in line for line in lines)


@pytest.mark.parametrize("loss", ["ms", "ce+ms", "triplet"])
def test_a_batch_below_two_classes_of_two_is_refused_for_a_pair_loss_before_the_data_is_read(tmp_path, loss):
    with pytest.raises(ValueError, match=f"batch size 3 cannot hold two classes of two images, and loss "
                                         f"{loss.replace('+', '[+]')} learns from pairs .* give a batch size of 4 "
                                         f"or more"):
        train(preset("default", **TINY, loss=loss, batch_size=3), tmp_path / "no-such-data", tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)


def test_a_batch_of_three_trains_a_loss_without_pairs(tiny_cifar_folder, tmp_path):
    _, lines = _logged(preset("default", **{**TINY, "epochs": 1}, loss="ce", batch_size=3), tiny_cifar_folder,
                       tmp_path / "a.safetensors")
    assert _epochs(lines)[0]["train_loss"] > 0


def test_resume_accepts_other_threads_and_device_and_says_so(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    assert train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1) is None
    result, lines = _logged(cfg.replace(threads=2, device="cpu"), tiny_cifar_folder, out, resume=True)
    assert any(line.startswith(f"resumed from {out}.ckpt at epoch 1 (device None there, 'cpu' here; threads 1 "
                               "there, 2 here") for line in lines), lines
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_still_refuses_another_configuration_beside_other_threads(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    with pytest.raises(ValueError, match=r"different configuration: lr 0.002 there, 0.1 here$"):
        train(cfg.replace(lr=0.1, threads=2), tiny_cifar_folder, out, progress=False, log=lambda _: None,
              resume=True)


def test_resume_accepts_another_max_test_and_scores_on_it(tiny_cifar_folder, tmp_path):
    # no epoch reads the test split: a run may be finished with fewer (or more) test images than it began with
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    result, lines = _logged(cfg.replace(max_test=8, eval_ms_m=2), tiny_cifar_folder, out, resume=True)
    assert any(line.startswith(f"resumed from {out}.ckpt at epoch 1 (eval_ms_m 8 there, 2 here; max_test None "
                               "there, 8 here: these say how the finished model is scored") for line in lines), lines
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert json.loads(result.metrics_path.read_text())["training"]["dataset"]["test_size"] == 8


def test_small_classes_are_measured_against_the_m_the_batch_takes_not_m_per_class(tiny_cifar_folder, tmp_path):
    # 4 classes cannot fill a batch of 128 with 8 of each: the plan takes 32 of each, and 12 images a class are
    # fewer than that (the line said "fewer than m_per_class=32", a value the configuration never had)
    _, lines = _logged(preset("default", **{**TINY, "epochs": 1}, loss="ms", batch_size=128), tiny_cifar_folder,
                       tmp_path / "a.safetensors")
    assert any("4 classes have fewer training images than the 32 of each class a batch takes (m_per_class=8, raised "
               "to fit the batch), so their images repeat within a batch" in line for line in lines), lines


def _other_classes(tiny: Path, dest: Path) -> Path:
    """`tiny` with two of its four classes."""
    for split in ("train", "test"):
        for cls in ("airplane", "cat"):
            shutil.copytree(tiny / split / cls, dest / split / cls)
    return dest


def _same_shape_other_labels(tiny: Path, dest: Path) -> Path:
    """`tiny` with the images of two classes swapped: the same class names, counts and file names."""
    shutil.copytree(tiny, dest)
    for split in ("train", "test"):
        (dest / split / "cat").rename(dest / split / "swap")
        (dest / split / "ship").rename(dest / split / "cat")
        (dest / split / "swap").rename(dest / split / "ship")
    return dest


def test_resume_refuses_a_dataset_with_other_classes_naming_both(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    other = _other_classes(tiny_cifar_folder, tmp_path / "two")
    with pytest.raises(ValueError, match=r"a.safetensors.ckpt: the checkpoint was written with a different "
                                         r"configuration: dataset tiny-cifar\w* \(4 classes: airplane, automobile, "
                                         r"cat, ship; 48 training images\) there, two \(2 classes: airplane, cat; "
                                         r"24 training images\) here$"):
        train(cfg, other, out, progress=False, log=lambda _: None, resume=True)


def test_resume_refuses_the_same_classes_and_counts_with_other_images(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    # the same folder name, too: only the images differ
    other = _same_shape_other_labels(tiny_cifar_folder, tmp_path / "x" / tiny_cifar_folder.name)
    with pytest.raises(ValueError, match=r"dataset (\S+) \(4 classes: .*; 48 training images\) there, \1 \(4 classes: "
                                         r".*; 48 training images; other images or labels\) here$"):
        train(cfg, other, out, progress=False, log=lambda _: None, resume=True)


def test_resume_accepts_the_same_data_moved_elsewhere(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    moved = shutil.copytree(tiny_cifar_folder, tmp_path / "elsewhere")
    result, lines = _logged(cfg, moved, out, resume=True)
    assert any(line.startswith("resumed from") for line in lines) and len(result.history) == 2


def _as_written_before_data_was_recorded(ckpt: Path) -> None:
    state = torch.load(ckpt, weights_only=True)
    del state["data"]
    torch.save(state, ckpt)


def test_a_checkpoint_written_before_it_recorded_its_data_still_resumes(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    _as_written_before_data_was_recorded(out.with_name(out.name + ".ckpt"))
    result, lines = _logged(cfg, tiny_cifar_folder, out, resume=True)
    assert any(line.startswith("resumed from") for line in lines) and len(result.history) == 2


def test_an_old_checkpoint_of_other_classes_is_refused_naming_it_not_with_a_traceback(tiny_cifar_folder, tmp_path):
    cfg = preset("default", **TINY)
    out = tmp_path / "a.safetensors"
    train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1)
    _as_written_before_data_was_recorded(out.with_name(out.name + ".ckpt"))
    with pytest.raises(ValueError, match=r"a.safetensors.ckpt: its weights do not fit this run \(another dataset "
                                         r"or model\?\): .*size mismatch"):
        train(cfg, _other_classes(tiny_cifar_folder, tmp_path / "two"), out, progress=False, log=lambda _: None,
              resume=True)


def test_max_train_and_max_test_below_one_image_a_class_say_they_kept_more(tiny_cifar_folder, tmp_path):
    # 4 classes, 12 training and 6 test images each: a stratified subset keeps at least 2 of each
    _, lines = _logged(preset("default", **{**TINY, "epochs": 1}, max_train=3, max_test=5), tiny_cifar_folder,
                       tmp_path / "a.safetensors")
    assert ("--max-train 3 kept 8 training images, not 3: a stratified subset keeps every class, at least 2 images "
            "of each of the 4 classes") in lines
    assert ("--max-test 5 kept 8 test images, not 5: a stratified subset keeps every class, at least 2 images of "
            "each of the 4 classes") in lines


def test_max_train_counts_the_validation_images_it_kept_and_says_nothing_when_exact(tiny_cifar_folder, tmp_path):
    _, lines = _logged(preset("default", **{**TINY, "val_fraction": 0.25, "epochs": 1}, max_train=20, max_test=8),
                       tiny_cifar_folder, tmp_path / "a.safetensors")
    assert not any("kept" in line and "--max-" in line for line in lines), lines
    # 20 kept, 8 of them held out to validate (2 a class at least): without them counted it would say 12
    assert any("(12 train, 8 val, 8 test)" in line for line in lines), lines
