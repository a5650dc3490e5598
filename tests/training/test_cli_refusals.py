"""Impossible options stop `simsearch train` and `simsearch evaluate` before any work with one line that
names the value: exit status 2, never a traceback, a silent fallback or a blame put elsewhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import model
from training import preset, train
from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--threads", "-1"], "threads must be at least 1, got -1"),
    (["--threads", "0"], "threads must be at least 1, got 0"),
    (["--image-size", "0"], "image_size must be at least 1, got 0"),
    (["--max-train", "0"], "max_train must be at least 1"),
    (["--max-test", "-3"], "max_test must be at least 1"),
    (["--stop-after", "0"], "--stop-after must be at least 1 epoch, got 0"),
    (["--arch", "stride=0"], "hybrid1 with {'stride': 0} cannot embed 3x32x32 images: non-positive stride"),
    (["--image-size", "2"], "cannot work on 3x2x2 images"),
    (["--loss", "ce", "--set", "label_smoothing=2"], "label_smoothing must be in [0, 1], got 2"),
    (["--set", "m_per_class=abc"], "m_per_class must be an integer, got 'abc'"),
    (["--set", "embed_dim=0"], "embed_dim must be at least 1, got 0"),
    (["--set", "in_chans=2"], "in_chans must be 1 (grey) or 3 (colour), got 2"),
    (["--loss", "supcon", "--set", 'loss_kwargs={"temperature":"hot"}'],
     "loss option temperature must be a number, got 'hot'"),
    (["--set", "loss_kwargs={ms_weight:2}"], "loss_kwargs must be a JSON object, got '{ms_weight:2}'"),
    (["--set", 'loss_kwargs={"ms_weight":"abc"}'], "loss option ms_weight must be a number, got 'abc'"),
    (["--model", "mobilenet_v2", "--arch", "stride=1"],
     "--arch stride=1: mobilenet_v2 cannot be built with it (TypeError: mobilenet_v2 takes no argument stride; it "
     "takes in_chans, embed_dim, small_input)"),
    (["--arch", "widths=abc"], "error: --arch widths=abc: hybrid1 cannot be built with it (TypeError: not all "
                               "arguments converted during string formatting); its default is [16, 64, 128]"),
    (["--arch", "norm=true", "--arch", 'widths=[8,"x"]'], '--arch widths=[8, "x"]: hybrid1 cannot be built with it'),
])
def test_train_refuses_impossible_options_with_one_line(tiny_cifar_folder, tmp_path, args, message):
    out = tmp_path / "x.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "1", "--quiet", *args,
                cache=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "bad model arguments {}" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_out_naming_a_folder_is_refused_before_the_data_is_read(tmp_path):
    folder = tmp_path / "isdir.safetensors"
    folder.mkdir()
    with pytest.raises(ValueError, match="isdir.safetensors is a folder; the artifact is a file"):
        train(preset("default", epochs=1), tmp_path / "no-such-data", folder, progress=False, log=lambda _: None)
    r = run_cli("train", str(tmp_path / "no-such-data"), "--out", str(folder), "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "is a folder" in r.stderr and "Traceback" not in r.stderr


def test_stop_after_tells_the_command_line_to_use_resume(tiny_cifar_folder, tmp_path):
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "x.safetensors"), "--epochs", "2",
                "--stop-after", "1", "--batch-size", "16", "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped after epoch 1; continue with the same command and --resume" in r.stdout


def test_train_help_names_the_losses_and_resume():
    r = subprocess.run([sys.executable, "-m", "cli", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "and/or Multi-Similarity" not in text and "any of the built-in losses (--loss)" in text
    assert "--resume" in text and "resume=True" not in text


def test_image_size_on_idx_data_is_refused_naming_the_value_not_passed_over(shared_data, tmp_path):
    out = tmp_path / "x.safetensors"
    r = run_cli("train", str(shared_data / "mnist"), "--out", str(out), "--epochs", "1", "--max-train", "64",
                "--image-size", "16", "--quiet", cache=tmp_path)
    assert r.returncode == 2, r.stderr
    assert (f"error: image_size 16: {shared_data / 'mnist'} is MNIST-style IDX data of 28x28 images, which are not "
            f"resized (image_size applies to ImageFolder data); leave it out or give 28") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_evaluate_refuses_threads_below_one(tiny_cifar_folder, tmp_path):
    r = run_cli("evaluate", str(REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"),
                str(tiny_cifar_folder), "--threads", "0", cache=tmp_path)
    assert r.returncode == 2 and "--threads must be at least 1, got 0" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_evaluate_refuses_a_max_test_below_one(tiny_cifar_folder, tmp_path):
    r = run_cli("evaluate", str(REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"),
                str(tiny_cifar_folder), "--max-test", "-3", cache=tmp_path)
    assert r.returncode == 2 and "--max-test must be at least 1" in r.stderr and "-3" in r.stderr


def test_a_baseline_refuses_arguments_it_does_not_take_naming_them():
    with pytest.raises(TypeError, match="mobilenet_v2 takes no argument bogus, stride; it takes in_chans, "
                                        "embed_dim, small_input"):
        model.create_model("mobilenet_v2", stride=1, bogus=2)
    with pytest.raises(TypeError, match="vgg16 takes no argument small_input; it takes in_chans, embed_dim"):
        model.create_model("vgg16", small_input=False)
