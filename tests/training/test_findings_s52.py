"""The training side's answers to the findings of session 52's bug hunt: a class-balanced batch never asks pml's
sampler for more images than m of each class, recall@5 and recall@10 look at 5 and 10 neighbours."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training import preset, train

REPO = Path(__file__).resolve().parents[2]
TINY = dict(epochs=1, model="cnn3a", augment=False, val_fraction=0.0, threads=1)


def _logged(cfg, data, out: Path, **kwargs) -> tuple[object, list[str]]:
    lines: list[str] = []
    result = train(cfg, data, out, progress=False, log=lines.append, **kwargs)
    return result, lines


def _many_classes(tiny: Path, dest: Path, classes: int, train_each: int = 3, test_each: int = 2) -> Path:
    """An ImageFolder tree of `classes` classes (c00, c01, ...) of `train_each` train and `test_each` test images,
    dealt out of `tiny`'s images (each image in one class only)."""
    images = sorted(tiny.glob("*/*/*.jpg"))
    assert len(images) >= classes * (train_each + test_each)
    it = iter(images)
    for c in range(classes):
        for split, n in (("train", train_each), ("test", test_each)):
            (dest / split / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shutil.copy(next(it), dest / split / f"c{c:02d}" / f"{i}.jpg")
    return dest


# --- F1: the default recipe's class-balanced batch for 13 or 15 classes ---------------------------------------------

def _old_plan(batch: int, m_per_class: int, classes: int) -> tuple[int, int]:
    """_batch_plan before the fix (raising m, then whole classes of m up to the batch)."""
    m = min(m_per_class, batch // 2)
    if m * classes < batch:
        m = max(2, batch // classes)
    return max(m, (batch // m) * m), m


@pytest.mark.parametrize("batch, m_per_class", [(128, 8), (64, 4), (256, 8), (512, 8), (10, 8), (100, 3), (4, 2)])
def test_a_class_balanced_batch_never_holds_more_than_m_of_each_class_and_is_unchanged_where_it_fitted(
        batch, m_per_class):
    from pytorch_metric_learning.samplers import MPerClassSampler

    from training._trainer import _batch_plan

    for classes in range(2, 80):
        size, m = _batch_plan(preset("default", batch_size=batch, m_per_class=m_per_class), classes, True)
        assert size % m == 0 and size <= m * classes and size <= batch, (batch, m_per_class, classes, size, m)
        old = _old_plan(batch, m_per_class, classes)
        if old[0] <= old[1] * classes:   # the plans that worked before are kept as they were
            assert (size, m) == old, (batch, m_per_class, classes)
        # pml's own check of the plan (it raised the AssertionError of the finding)
        MPerClassSampler(np.repeat(np.arange(classes), 2), m, batch_size=size, length_before_new_iter=size)


def test_the_default_batch_plans_of_ten_thirteen_and_fifteen_classes():
    from training._trainer import _batch_plan

    cfg = preset("default")
    assert (cfg.batch_size, cfg.m_per_class) == (128, 8)
    assert _batch_plan(cfg, 10, True) == (120, 12)    # as before
    assert _batch_plan(cfg, 13, True) == (117, 9)     # was 126 = 14 x 9 > 13 x 9: pml's AssertionError
    assert _batch_plan(cfg, 15, True) == (120, 8)     # was 128 = 16 x 8 > 15 x 8
    assert _batch_plan(cfg, 16, True) == (128, 8)


@pytest.mark.parametrize("classes", [13])
def test_the_default_recipe_trains_thirteen_classes(tiny_cifar_folder, tmp_path, classes):
    data = _many_classes(tiny_cifar_folder, tmp_path / "many", classes)
    result, lines = _logged(preset("default", **TINY), data, tmp_path / "a.safetensors")
    assert any("batch 117 = 13 classes x 9" in line for line in lines), lines
    assert result.metrics


# --- F2: recall@5 and recall@10 looked at (largest class - 1) neighbours only -----------------------------------------

def _brute_recall(emb: np.ndarray, labels: np.ndarray, r: int, ref: np.ndarray | None = None,
                  ref_labels: np.ndarray | None = None) -> float:
    """Recall@r by brute force: a query counts when one of its r most cosine-similar others shares its label."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    if ref is None:
        sim, ref_labels = unit @ unit.T, labels
        np.fill_diagonal(sim, -np.inf)
    else:
        sim = unit @ (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
    order = np.argsort(-sim, axis=1)
    return float((ref_labels[order[:, :r]] == labels[:, None]).any(axis=1).mean())


def _plain_pml(emb: np.ndarray, labels: np.ndarray, **kwargs) -> dict[str, float]:
    """pml's own AccuracyCalculator (k="max_bin_count", as the metrics were computed before the fix)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from training._evaluate import RETRIEVAL_METRICS

    calc = AccuracyCalculator(include=RETRIEVAL_METRICS, k="max_bin_count", device=torch.device("cpu"))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    if "reference" in kwargs:
        kwargs["reference"] = kwargs["reference"] / np.linalg.norm(kwargs["reference"], axis=1, keepdims=True)
    return {k: float(v) for k, v in calc.get_accuracy(unit.astype(np.float32), labels, **kwargs).items()}


@pytest.mark.parametrize("sizes", [[2] * 20, [2, 3, 4] * 6])
def test_recall_at_5_and_10_look_at_5_and_10_neighbours_with_small_test_classes(sizes):
    from training import retrieval_metrics

    emb = np.random.default_rng(0).normal(size=(sum(sizes), 16)).astype(np.float32)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    got = retrieval_metrics(torch.from_numpy(emb), torch.from_numpy(labels))
    for r in (1, 5, 10):
        assert got[f"recall_at_{r}"] == pytest.approx(_brute_recall(emb, labels, r)), r
    assert got["recall_at_5"] > got["precision_at_1"] and got["recall_at_10"] > got["recall_at_5"]
    before = _plain_pml(emb, labels)   # the other metrics as pml computes them, unchanged
    assert {k: got[k] for k in before} == pytest.approx(before, abs=1e-9)


def test_recall_at_10_against_a_reference_set_of_small_classes():
    from training import evaluate_embeddings

    rng = np.random.default_rng(1)
    ref, ref_labels = rng.normal(size=(40, 16)).astype(np.float32), np.repeat(np.arange(20), 2)
    queries, labels = rng.normal(size=(30, 16)).astype(np.float32), np.arange(30) % 20
    got = evaluate_embeddings(queries, labels, reference=ref, reference_labels=ref_labels)
    for r in (1, 5, 10):
        assert got[f"recall_at_{r}"] == pytest.approx(_brute_recall(queries, labels, r, ref, ref_labels)), r
    assert got["recall_at_10"] > got["precision_at_1"]
    before = _plain_pml(queries, labels, reference=ref, reference_labels=ref_labels, ref_includes_query=False)
    assert {k: got[k] for k in before} == pytest.approx(before, abs=1e-9)


def test_big_test_classes_keep_every_retrieval_metric_as_it_was():
    from training import retrieval_metrics

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 30)
    emb = (rng.normal(size=(150, 16)) + 1.5 * np.eye(16)[labels]).astype(np.float32)
    got = retrieval_metrics(torch.from_numpy(emb), torch.from_numpy(labels))
    before = _plain_pml(emb, labels)
    assert {k: got[k] for k in before} == pytest.approx(before, abs=1e-9)
    for r in (1, 5, 10):
        assert got[f"recall_at_{r}"] == pytest.approx(_brute_recall(emb, labels, r)), r


# --- F3: --nproc 2 with augmentation, stopped and resumed, is the uninterrupted run ----------------------------------

def test_two_processes_with_augmentation_stopped_and_resumed_train_the_uninterrupted_weights(tiny_cifar_folder,
                                                                                             tmp_path):
    from safetensors.torch import load_file

    from .conftest import run_cli

    # the other process draws its own augmentations: seeded once at the epoch it started from, a resumed run drew
    # other ones from the second epoch on
    common = ["--model", "cnn3a", "--loss", "ce", "--val-fraction", "0", "--epochs", "3", "--batch-size", "16",
              "--quiet", "--threads", "1", "--nproc", "2"]
    full, resumed = tmp_path / "full.safetensors", tmp_path / "resumed.safetensors"
    for out, extra in ((full, []), (resumed, ["--stop-after", "1"]), (resumed, ["--resume"])):
        r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), *common, *extra, cache=tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = load_file(full), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


# --- F6: test classes with no training images are scored by retrieval only, not by the CE head ------------------------

def test_ce_counts_only_the_test_images_of_classes_the_head_learnt():
    from training import evaluate_embeddings

    rng = np.random.default_rng(3)
    emb, labels = torch.from_numpy(rng.normal(size=(24, 8)).astype(np.float32)), torch.arange(24) % 4
    head = {"weight": torch.from_numpy(rng.normal(size=(4, 8)).astype(np.float32)), "bias": torch.zeros(4)}
    got = evaluate_embeddings(emb, labels, head, class_names=["a", "b", "c", "d"], ce_classes=[0, 1])
    keep = labels < 2
    logits = emb[keep] @ head["weight"].T
    assert got["ce_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels[keep]).item())
    assert got["ce_accuracy"] == pytest.approx((logits.argmax(1) == labels[keep]).float().mean().item())
    assert got["ce_left_out"] == ("ce_loss and ce_accuracy over 12 of the 24 test images: the 12 of 2 classes with "
                                  "no training images (c, d) left out (the classifier cannot have learnt them)")
    none = evaluate_embeddings(emb, labels, head, class_names=["a", "b", "c", "d"], ce_classes=[])
    assert "ce_loss" not in none and "ce_accuracy" not in none
    assert none["ce_left_out"].startswith("no ce_loss or ce_accuracy: the 24 test images are all of 4 classes with "
                                          "no training images (a, b, c, d)")
    every = evaluate_embeddings(emb, labels, head, ce_classes=[0, 1, 2, 3])
    assert "ce_left_out" not in every
    assert every["ce_loss"] == evaluate_embeddings(emb, labels, head)["ce_loss"]


def _test_only_classes(tiny: Path, dest: Path, trained: tuple[str, ...]) -> Path:
    """`tiny` with training images of the classes `trained` only (test/ keeps all four)."""
    for cls in trained:
        shutil.copytree(tiny / "train" / cls, dest / "train" / cls)
    shutil.copytree(tiny / "test", dest / "test")
    return dest


def test_a_run_with_test_only_classes_leaves_them_out_of_ce_and_evaluate_says_the_same(tiny_cifar_folder, tmp_path):
    from training import evaluate_artifact

    data = _test_only_classes(tiny_cifar_folder, tmp_path / "open", ("airplane", "automobile"))
    out = tmp_path / "a.safetensors"
    result, lines = _logged(preset("default", **TINY, loss="ce"), data, out)
    said = ("ce_loss and ce_accuracy over 12 of the 24 test images: the 12 of 2 classes with no training images "
            "(cat, ship) left out (the classifier cannot have learnt them)")
    assert result.metrics["ce_left_out"] == said
    assert any(said in line for line in lines), lines
    evaluated = evaluate_artifact(out, data, progress=False)
    assert evaluated["ce_left_out"] == said
    assert evaluated["ce_loss"] == pytest.approx(result.metrics["ce_loss"], abs=1e-5)


def test_a_run_whose_test_classes_have_no_training_images_has_no_ce_loss(tiny_cifar_folder, tmp_path):
    data = tmp_path / "unseen"
    for split, classes in (("train", ("airplane", "automobile")), ("test", ("cat", "ship"))):
        for cls in classes:
            shutil.copytree(tiny_cifar_folder / split / cls, data / split / cls)
    result, _ = _logged(preset("default", **TINY, loss="ce"), data, tmp_path / "a.safetensors")
    assert "ce_loss" not in result.metrics and "ce_accuracy" not in result.metrics
    assert result.metrics["ce_left_out"].startswith("no ce_loss or ce_accuracy: the 12 test images are all of 2 "
                                                    "classes with no training images (cat, ship)")


# --- F4, F5: `train --nproc 2` killed (its processes end with it) or interrupted with Ctrl-C (exit 130) -------------

def _start_in_two_processes(data: Path, out: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`simsearch train --nproc 2` of many epochs in a session of its own, its output in a file."""
    # TMPDIR: the launcher's log folder (simsearch-train-*), which a killed launcher cannot remove, stays in tmp_path
    env = {**os.environ, "SIMSEARCH_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env.pop("WORLD_SIZE", None)
    log = tmp_path / "train.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "train", str(data), "--out", str(out), "--model",
                                 "cnn3a", "--loss", "ce", "--no-augment", "--val-fraction", "0", "--epochs", "1000",
                                 "--batch-size", "16", "--quiet", "--threads", "1", "--nproc", "2"],
                                cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while '{"epoch": 1' not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    return proc, log


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_the_training_processes_end_when_the_train_command_that_started_them_is_killed(tiny_cifar_folder,
                                                                                        tmp_path):
    proc, log = _start_in_two_processes(tiny_cifar_folder, tmp_path / "a.safetensors", tmp_path)
    workers = _children(proc.pid)
    try:
        assert len(workers) == 2, (workers, log.read_text())
        proc.kill()   # kill -9: it holds OUT's lock for them, and can stop nothing
        proc.wait(30)
        deadline = time.monotonic() + 15
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        # they trained on, without the lock, and wrote OUT.ckpt beside a --resume started meanwhile
        assert not any(map(_running, workers)), [w for w in workers if _running(w)]
    finally:
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a session's Ctrl-C as a terminal sends it")
def test_ctrl_c_on_training_in_two_processes_says_what_to_run_next_and_exits_130(tiny_cifar_folder, tmp_path):
    out = tmp_path / "a.safetensors"
    proc, log = _start_in_two_processes(tiny_cifar_folder, out, tmp_path)
    workers = _children(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C: the terminal's whole process group
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
    said = log.read_text(errors="replace")
    # was torchrun's SignalException traceback and exit status 1
    assert rc == 130, said
    assert "Traceback" not in said and "SignalException" not in said, said
    assert f"interrupted; {out}.ckpt holds the last finished epoch" in said, said


# --- F8: a negative <part>_weight and an unknown `triplets` refused by validate(), before the data is read ------------

@pytest.mark.parametrize("loss, options, message", [
    ("ce+ms", {"ms_weight": -1}, "loss option ms_weight must be a number of at least 0, got -1.0"),
    ("ce+triplet", {"ce_weight": -0.5}, "loss option ce_weight must be a number of at least 0, got -0.5"),
    ("triplet", {"triplets": "semi"}, "loss option triplets must be one of all, hard, semihard, easy, got 'semi'"),
    ("ce+triplet", {"triplets": "hardest"},
     "loss option triplets must be one of all, hard, semihard, easy, got 'hardest'"),
])
def test_loss_options_create_loss_refuses_are_refused_by_validate_and_before_the_data_is_read(tmp_path, loss, options,
                                                                                              message):
    from .conftest import run_cli

    with pytest.raises(ValueError) as exc:
        preset("default", loss=loss, loss_kwargs=options).validate()
    assert str(exc.value) == message
    with pytest.raises(ValueError) as exc:   # the data is not there: refused before it would be looked for
        train(preset("default", **TINY, loss=loss, loss_kwargs=options), tmp_path / "no-such-data",
              tmp_path / "a.safetensors", progress=False, log=lambda _: None)
    assert str(exc.value) == message
    r = run_cli("train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "a.safetensors"), "--loss", loss,
                "--set", f"loss_kwargs={json.dumps(options)}", cache=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_weight_of_0_and_the_known_triplets_still_pass():
    preset("default", loss="ce+ms", loss_kwargs={"ms_weight": 0}).validate()
    for triplets in ("all", "hard", "semihard", "easy"):
        preset("default", loss="triplet", loss_kwargs={"triplets": triplets}).validate()


# --- F9: the mistakes sheet and the map draw class names outside ASCII as letters, not boxes -------------------------

def _sheet_and_map(tmp_path: Path, names: list[str], tag: str) -> tuple[bytes, bytes]:
    from training._evaluate import _nearest_neighbours
    from training._map import embedding_map
    from training._mistakes import confident_mistakes, mistakes_sheet

    rng = np.random.default_rng(4)
    images = torch.from_numpy(rng.integers(0, 255, size=(12, 3, 16, 16), dtype=np.uint8))
    labels, emb = torch.arange(12) % 3, torch.from_numpy(rng.normal(size=(12, 8)).astype(np.float32))
    found = confident_mistakes(labels, _nearest_neighbours(emb), 4, names)
    assert found
    sheet, chart = tmp_path / f"sheet-{tag}.png", tmp_path / f"map-{tag}.png"
    mistakes_sheet(sheet, images, labels, emb, found, class_names=names, title="t")
    embedding_map(chart, images, labels, emb, class_names=names, title="t")
    return sheet.read_bytes(), chart.read_bytes()


def test_the_mistakes_sheet_and_the_map_draw_class_names_outside_ascii_as_letters(tmp_path):
    from training._mistakes import FONTS

    from PIL import ImageFont

    installed = []
    for name in FONTS:
        try:
            installed.append(ImageFont.truetype(name, 11))
        except OSError:
            continue
    if not installed:
        pytest.skip(f"none of {FONTS} is installed here: Pillow's default font draws boxes")
    # Pillow's default font drew é, ж and a character no font has alike (a box): the same pictures
    letters = _sheet_and_map(tmp_path, ["café", "жук", "ship"], "letters")
    boxes = _sheet_and_map(tmp_path, ["caf\ue000", "\ue000\ue000\ue000", "ship"], "boxes")
    assert letters[0] != boxes[0]
    assert letters[1] != boxes[1]


# --- F7: metrics with nothing to score (a test split of one image a class) are null in JSON, not a bare NaN ----------

def _strict_json(text: str):
    """json.loads refusing NaN and Infinity, as strict JSON parsers (JavaScript's, jq's) do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_a_test_split_of_one_image_a_class_writes_null_metrics_into_the_metrics_file_and_evaluate_json(
        tiny_cifar_folder, tmp_path):
    from .conftest import run_cli

    data = tmp_path / "single"
    for cls in ("airplane", "cat"):
        shutil.copytree(tiny_cifar_folder / "train" / cls, data / "train" / cls)
        (data / "test" / cls).mkdir(parents=True)
        shutil.copy(sorted((tiny_cifar_folder / "test" / cls).iterdir())[0], data / "test" / cls / "0.jpg")
    out = tmp_path / "a.safetensors"
    result, _ = _logged(preset("default", **TINY, loss="ce"), data, out)
    assert np.isnan(result.metrics["precision_at_1"])   # in Python: NaN, a float
    saved = _strict_json(result.metrics_path.read_text())["metrics"]
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r", "recall_at_10"):
        assert saved[key] is None, key
    assert saved["ce_loss"] == pytest.approx(result.metrics["ce_loss"])   # the finite ones as they are
    r = run_cli("evaluate", str(out), str(data), "--json", str(tmp_path / "e.json"), "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    evaluated = _strict_json((tmp_path / "e.json").read_text())
    assert evaluated["precision_at_1"] is None and evaluated["recall_at_5"] is None


# --- F10: resuming a fine-tune refuses an --init file that is another model now, and follows one that moved ----------

def test_resuming_a_fine_tune_refuses_an_init_file_that_is_another_model_now_naming_both(tiny_cifar_folder,
                                                                                           tmp_path):
    import model

    start, other = tmp_path / "start.safetensors", tmp_path / "other.safetensors"
    train(preset("default", **TINY, loss="ce"), tiny_cifar_folder, start, name="start", progress=False,
          log=lambda _: None)
    train(preset("default", **TINY, loss="ce", seed=1), tiny_cifar_folder, other, name="other", progress=False,
          log=lambda _: None)
    start_id, other_id = model.load_artifact(start).model_id, model.load_artifact(other).model_id
    cfg = preset("default", **{**TINY, "epochs": 2}, loss="ce", init_from=str(start))
    out = tmp_path / "tuned.safetensors"
    assert train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, stop_after=1) is None
    kept = tmp_path / "kept" / "start.safetensors"
    kept.parent.mkdir()
    shutil.move(start, kept)
    shutil.copy(other, start)   # --init's file replaced by another model of the same shape
    with pytest.raises(ValueError, match=rf"tuned.safetensors.ckpt: the checkpoint was written with a different "
                                         rf"configuration: starting model \(init_from\) {start_id} there, {other_id} "
                                         rf"here \({start} is another model now\)$"):
        train(cfg, tiny_cifar_folder, out, progress=False, log=lambda _: None, resume=True)
    # the same model moved: --init names where it is now, and the run goes on from its checkpoint
    result, lines = _logged(cfg.replace(init_from=str(kept)), tiny_cifar_folder, out, resume=True)
    assert any(line.startswith(f"resumed from {out}.ckpt at epoch 1") for line in lines), lines
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert model.read_meta(out).training["init_from"] == start_id
