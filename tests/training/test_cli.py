"""`simsearch train` and `simsearch evaluate` end to end in a subprocess, on a tiny real ImageFolder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import model
from PIL import Image

from ..user_models import write_user_loss, write_user_models
from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_train_then_evaluate_an_imagefolder(tiny_cifar_folder, tmp_path):
    out = tmp_path / "tiny.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "2", "--batch-size", "16",
                "--threads", "1", "--quiet", "--arch", "norm=true", "--name", "tiny-shapes", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(out)
    assert meta.name == "tiny-shapes" and meta.class_names == ["airplane", "automobile", "cat", "ship"]
    assert meta.arch_kwargs == {"norm": True} and meta.in_chans == 3 and meta.image_size == 32
    assert meta.metrics["test_size"] == 24 and "ce_loss" in meta.metrics
    assert meta.tta == "hflip"  # photos are trained with mirror images, so they are embedded with them too
    metrics = json.loads(out.with_name("tiny.metrics.json").read_text())["metrics"]
    assert metrics["precision_at_1"] == meta.metrics["precision_at_1"]

    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--json", str(tmp_path / "eval.json"),
                cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "precision_at_1" in r.stdout and "ms_loss" in r.stdout
    assert r.stdout.startswith("24 test images, test-time augmentation hflip\n")
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["precision_at_1"] == meta.metrics["precision_at_1"]
    # the per-class report names the user's folders, as the console line does
    assert [c["class"] for c in res["per_class"]] == meta.class_names
    assert all(c["count"] == 6 for c in res["per_class"])
    worst = min(res["per_class"], key=lambda c: c["precision_at_1"])
    assert f"lowest precision@1 by class: {worst['class']} {worst['precision_at_1']:.3f}" in r.stdout
    assert res["dataset"]["num_classes"] == 4 and res["tta"] == "hflip"
    assert [t["target_precision"] for t in res["match_thresholds"]] == [0.9, 0.95, 0.99]

    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--tta", "none", "--json",
                str(tmp_path / "plain.json"), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("24 test images, test-time augmentation none\n")
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["tta"] == "none" and plain["ms_loss"] != res["ms_loss"]

    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--tta", "none", "--out",
                str(tmp_path / "single-view.safetensors"), "--name", "tiny-single", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    copy = model.read_meta(tmp_path / "single-view.safetensors")
    assert "wrote" in r.stdout and copy.tta == "none" and copy.name == "tiny-single"
    assert copy.training["trained_as"] == "tiny-shapes"
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--name", "x", cache=tmp_path)
    assert r.returncode == 2 and "give --out too" in r.stderr
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--centre", "0.5", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("24 test images, test-time augmentation hflip, centred by 0.5 of the mean embedding\n")
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--centre", "1.5", cache=tmp_path)
    assert r.returncode == 2 and "--centre is a share of the mean embedding in [0, 1], got 1.5" in r.stderr
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--out", "/proc/no/such.safetensors",
                cache=tmp_path)
    assert r.returncode != 0 and "/proc/no" in r.stderr and "Traceback" not in r.stderr


def test_a_users_folder_with_broken_files_trains_and_evaluates_saying_which_were_left_out(tiny_cifar_folder,
                                                                                          tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_cifar_folder, folder)
    (folder / "train" / "cat" / "zero-bytes.jpg").write_bytes(b"")
    good = next((folder / "test" / "ship").iterdir()).read_bytes()
    (folder / "test" / "ship" / "cut.jpg").write_bytes(good[:len(good) // 3])  # a copy cut short
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--threads", "1",
                "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    line = f"{folder}: left out 2 images that could not be decoded: test/ship/cut.jpg: OSError: "
    assert line in r.stdout and "train/cat/zero-bytes.jpg: UnidentifiedImageError" in r.stdout
    dataset = json.loads(out.with_name("m.metrics.json").read_text())["training"]["dataset"]
    assert dataset["dataset_train_size"] == 48 and dataset["test_size"] == 24 and dataset["skipped_images"]["count"] == 2
    assert dataset["train_size"] + dataset["val_size"] == 48 and dataset["val_size"] > 0   # the sizes the run used
    r = run_cli("evaluate", str(out), str(folder), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    # evaluate decodes test/ alone (train/ only for --centre): the broken training image is not its to name
    assert f"{folder}: left out 1 image that could not be decoded: test/ship/cut.jpg: OSError: " in r.stderr
    assert "zero-bytes.jpg" not in r.stderr and r.stdout.startswith("24 test images")


def test_an_architecture_and_a_loss_of_the_users_own_train_and_evaluate_through_simsearch_model_modules(
        tiny_cifar_folder, tmp_path):
    module = write_user_models(tmp_path / "mine", arch="users_cnn")
    loss = write_user_loss(tmp_path / "mine")
    out = tmp_path / "mine.safetensors"
    args = ["train", str(tiny_cifar_folder), "--out", str(out), "--model", "users_cnn", "--loss", "users_triplet",
            "--set", 'loss_kwargs={"margin": 0.2}', "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
    r = run_cli(*args, cache=tmp_path)
    assert r.returncode == 2 and "unknown loss 'users_triplet'" in r.stderr and "SIMSEARCH_MODEL_MODULES" in r.stderr
    r = run_cli(*args, cache=tmp_path, env={"SIMSEARCH_MODEL_MODULES": str(loss)})
    assert r.returncode == 2 and "unknown model 'users_cnn'" in r.stderr and "SIMSEARCH_MODEL_MODULES" in r.stderr
    r = run_cli(*args, cache=tmp_path, env={"SIMSEARCH_MODEL_MODULES": f"{module},{loss}"})
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(out)
    assert meta.arch == "users_cnn" and meta.arch_source == str(module.resolve()) and meta.embed_dim == 256
    assert meta.training["config"]["loss"] == "users_triplet" and meta.training["config"]["m_per_class"] > 0
    assert meta.training["config"]["loss_kwargs"] == {"margin": 0.2}
    assert meta.metrics["parameters"] == 16 * 27 + 16 + 32 * 144 + 32 + 32 * 256 + 256
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), cache=tmp_path)
    assert r.returncode == 2 and f"it was registered by '{module.resolve()}'" in r.stderr
    # the same module by its dotted name, found on PYTHONPATH
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), cache=tmp_path,
                env={"SIMSEARCH_MODEL_MODULES": "my_models", "PYTHONPATH": str(module.parent)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("24 test images")
    r = run_cli("models", cache=tmp_path, env={"SIMSEARCH_MODEL_MODULES": "my_models,no_such_models",
                                                  "PYTHONPATH": str(module.parent)})
    assert r.returncode == 2
    assert r.stderr.strip() == ("simsearch models: error: SIMSEARCH_MODEL_MODULES: cannot import model module "
                                "'no_such_models': ModuleNotFoundError: No module named 'no_such_models'")


def test_a_misspelt_loss_or_loss_option_stops_train_before_any_work_naming_it(tiny_cifar_folder, tmp_path):
    out = tmp_path / "never.safetensors"
    base = ["train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "1", "--quiet"]
    r = run_cli(*base, "--loss", "ce+tripplet", cache=tmp_path)
    assert r.returncode == 2 and "unknown loss 'tripplet' in 'ce+tripplet'; known: " in r.stderr
    assert "triplet" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*base, "--loss", "ce+triplet", "--set", 'loss_kwargs={"margn": 0.3}', cache=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "loss option 'margn' is not one that loss 'ce+triplet' takes; it takes ce_weight, label_smoothing, " \
           "margin, triplet_weight, triplets" in r.stderr
    assert not out.exists()


def test_fold_norm_flag_writes_the_plain_hybrid1_on_a_users_folder(tiny_cifar_folder, tmp_path):
    out = tmp_path / "folded.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                "--threads", "1", "--quiet", "--fold-norm", "--arch", "strides=[1,2,2]", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(out)
    assert meta.arch_kwargs == {"strides": [1, 2, 2]} and meta.training["config"]["fold_norm"] is True
    assert meta.metrics["parameters"] == 116_634
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "v.safetensors"), "--epochs", "1",
                "--model", "vgg16", "--fold-norm", "--quiet", cache=tmp_path)
    assert r.returncode == 2 and "fold_norm needs" in r.stderr and "'vgg16' cannot" in r.stderr


def test_init_fine_tunes_from_an_artifact_and_refuses_one_that_does_not_fit(tiny_cifar_folder, tmp_path):
    start = tmp_path / "start.safetensors"
    common = ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(start), "--name", "start", "--arch", "norm=true",
                "--arch", "widths=[8,16,32]", *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    tuned = tmp_path / "tuned.safetensors"
    # no --arch: the architecture is the artifact's
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tuned), "--init", str(start), "--loss", "ms",
                *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(tuned)
    assert meta.arch_kwargs == {"norm": True, "widths": [8, 16, 32]}
    assert meta.training["init_from"].startswith("start@") and meta.mean == model.read_meta(start).mean
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "x.safetensors"), "--init", str(start),
                "--arch", "norm=true", *common, cache=tmp_path)   # an --arch of its own: default widths
    assert r.returncode == 2 and "do not fit hybrid1" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "y.safetensors"), "--init",
                str(tmp_path / "missing.safetensors"), *common, cache=tmp_path)
    assert r.returncode == 2 and "--init:" in r.stderr and "no such model artifact" in r.stderr


def test_a_teacher_distils_into_a_student_and_one_for_other_images_is_refused(tiny_cifar_folder, tmp_path):
    common = ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
    teacher = tmp_path / "teacher.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(teacher), "--name", "teacher", "--arch", "norm=true",
                *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    student = tmp_path / "student.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(student), "--teacher", str(teacher), "--loss", "ce",
                "--fold-norm", "--set", "distill_weight=2", *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(student)
    assert meta.training["teachers"] == [model.load_artifact(teacher).model_id]
    assert meta.training["config"]["teachers"] == [str(teacher)] and meta.training["config"]["distill_weight"] == 2
    assert meta.metrics["parameters"] == 116_634  # the student keeps its own architecture
    soft = tmp_path / "soft.safetensors"  # soft labels too: the teacher (ce+ms) has a cross-entropy head
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(soft), "--teacher", str(teacher), "--loss", "ce",
                "--set", "distill_logits_weight=0.5", *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert model.read_meta(soft).training["config"]["distill_logits_weight"] == 0.5
    views = tmp_path / "views.safetensors"  # the teacher embeds each augmented batch, soft labels included
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(views), "--teacher", str(teacher), "--loss", "ce",
                "--set", "distill_views=augmented", "--set", "distill_logits_weight=0.5", *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(views)
    assert meta.training["config"]["distill_views"] == "augmented"
    assert meta.training["teachers"] == [model.load_artifact(teacher).model_id]
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "v.safetensors"), "--teacher",
                str(teacher), "--set", "distill_views=noisy", *common, cache=tmp_path)
    assert r.returncode == 2 and "distill views must be clean or augmented, got 'noisy'" in r.stderr
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "z.safetensors"), "--teacher",
                str(teacher), "--loss", "ms", "--set", "distill_logits_weight=1", *common, cache=tmp_path)
    assert r.returncode == 2 and "needs a loss with a cross-entropy head (ce, ce+ms), not 'ms'" in r.stderr
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "w.safetensors"), "--set",
                "distill_logits_weight=1", *common, cache=tmp_path)
    assert r.returncode == 2 and "distill logits weight needs a teacher (--teacher ARTIFACT)" in r.stderr
    small = tmp_path / "small.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(small), "--image-size", "16", *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "x.safetensors"), "--teacher", str(small),
                *common, cache=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "it embeds 3x16x16 images, this run trains on 3x32x32" in r.stderr
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "y.safetensors"), "--teacher",
                str(teacher), "--set", "distill_temperature=0", *common, cache=tmp_path)
    assert r.returncode == 2 and "distill temperature must be positive, got 0" in r.stderr


def test_user_mistakes_give_one_clear_line_and_status_2(tmp_path, capsys):
    import cli

    (tmp_path / "empty").mkdir()
    r = run_cli("train", str(tmp_path / "empty"), "--out", str(tmp_path / "m.safetensors"), cache=tmp_path)
    assert r.returncode == 2 and "not a dataset layout" in r.stderr and "Traceback" not in r.stderr
    out = str(tmp_path / "m.safetensors")
    for args, message in [(["train", str(tmp_path / "empty"), "--out", out, "--loss", "hinge"], "unknown loss 'hinge'"),
                          (["train", str(tmp_path / "empty"), "--out", out, "--model", "resnet9"],
                           "unknown model 'resnet9'"),
                          (["train", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt")], "must end in .safetensors"),
                          (["train", str(tmp_path / "empty"), "--out", out, "--set", "lr_decay=0.5"],
                           "--set lr_decay: not a training setting; the settings are amp, arch_kwargs,"),
                          (["evaluate", str(tmp_path / "nope.safetensors"), str(tmp_path)], "no such model artifact")]:
        assert cli.main(args) == 2
        assert message in capsys.readouterr().err


def test_a_failed_process_is_shown_from_the_start_of_its_crash_report_however_deep_its_stack(tmp_path):
    from cli._train import _last_lines

    err = tmp_path / "run" / "attempt_0" / "1" / "stderr.log"
    err.parent.mkdir(parents=True)
    frames = [f'  File "/site-packages/kornia/deep.py", line {i} in f{i}' for i in range(30)]
    err.write_text("\n".join(["noise"] * 50 + ["Fatal Python error: Aborted", "", "Current thread 0x1 (most recent "
                              "call first):", *frames, '  File "training/_trainer.py", line 396 in _train',
                              "", "Extension modules: numpy, torch (total: 2)"]) + "\n")
    shown = _last_lines(tmp_path, 1)
    assert shown.startswith("the last of its stderr:\n  Fatal Python error: Aborted\n  Current thread")
    assert shown.endswith('training/_trainer.py", line 396 in _train') and "noise" not in shown
    err.write_text("\n".join(f"line {i}" for i in range(50)) + "\n")   # no crash report: the last 20 lines
    assert _last_lines(tmp_path, 1) == "the last of its stderr:\n  " + "\n  ".join(f"line {i}" for i in range(30, 50))


def test_ctrl_c_after_an_epoch_says_how_to_go_on_and_resume_goes_on(tiny_cifar_folder, tmp_path):
    import signal
    import time

    out = tmp_path / "stopped.safetensors"
    args = [sys.executable, "-m", "cli", "train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "200",
            "--batch-size", "16", "--threads", "1", "--quiet"]
    env = {**os.environ, "SIMSEARCH_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    # Ctrl-C as a terminal's user sends it: a suite started in the background (`bash .ci/run &`) passes SIGINT
    # on ignored, and Python then never raises KeyboardInterrupt; the child gets the default back
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = out.with_name(out.name + ".ckpt")
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)   # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"interrupted; {ckpt} holds the last finished epoch: run the same command with --resume" in err
    assert "Traceback" not in err and not out.exists()


def test_quiet_hides_the_decode_progress_bar_of_a_large_dataset_in_train_and_evaluate(tmp_path):
    # 2,000 images: the size from which decoding shows a bar (training/_data.py, _BAR_FROM)
    photos = tmp_path / "photos"
    for c, rgb in enumerate([(200, 30, 30), (30, 30, 200)]):
        (photos / f"class{c}").mkdir(parents=True)
        for i in range(1000):
            Image.new("RGB", (4, 4), (rgb[0], (i * 7) % 256, rgb[2])).save(photos / f"class{c}" / f"{i}.png")
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(photos), "--out", str(out), "--epochs", "1", "--max-train", "64", "--max-test", "32",
                "--batch-size", "16", "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "decode" not in r.stderr and "img/s" not in r.stderr, r.stderr
    r = run_cli("evaluate", str(out), str(photos), "--max-test", "32", "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "decode" not in r.stderr and "img/s" not in r.stderr, r.stderr
    assert "32 test images" in r.stdout


def test_a_training_runs_metrics_file_records_its_confident_mistakes_as_evaluate_does(tiny_cifar_folder, tmp_path):
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                "--threads", "1", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(out.with_name("m.metrics.json").read_text())["metrics"]
    r = run_cli("evaluate", str(out), str(tiny_cifar_folder), "--json", str(tmp_path / "eval.json"), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    pairs = [(m["query_file"], m["neighbour_file"]) for m in metrics["confident_mistakes"]]
    assert pairs and pairs == [(m["query_file"], m["neighbour_file"]) for m in evaluated["confident_mistakes"]]
    assert metrics["confident_mistakes"][0]["query_file"].startswith("test/")
    assert "confident_mistakes" not in model.read_meta(out).metrics   # as evaluate --out copies leave them out
