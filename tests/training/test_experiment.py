"""The Table 1 runner on a tiny slice: it trains each cell, writes Markdown and JSON, reuses finished runs, and
shares a work folder with other processes without training a cell twice."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from training import ConfigError, ExperimentConfig, run_experiment
from training import _experiment as exp

REPO = Path(__file__).resolve().parents[2]


def test_table1_slice_writes_ours_beside_the_papers(shared_data, tmp_path):
    logs: list[str] = []
    cfg = ExperimentConfig("table1", data_root=shared_data, datasets=["mnist"], models=["inn2"], losses=["ce", "ms"],
                           epochs={"mnist": 1}, preset="paper", max_train=300, max_test=500, threads=1,
                           out_dir=tmp_path / "results", work_dir=tmp_path / "work", command="test")
    md, js = run_experiment(cfg, log=logs.append)
    assert (md, js) == (tmp_path / "results" / "paper-table1.md", tmp_path / "results" / "paper-table1.json")
    payload = json.loads(js.read_text())
    rows = {r["loss"]: r for r in payload["results"]}
    assert set(rows) == {"ce", "ms"} and rows["ce"]["parameters"] == 560  # the paper's count
    assert rows["ce"]["loss_value"] == rows["ce"]["ce_loss"] and rows["ms"]["loss_value"] == rows["ms"]["ms_loss"]
    assert rows["ms"]["ce_loss"] is None  # an MS-trained model has no classification head
    text = md.read_text()
    assert "Vanilla INN-2" in text and "/ 1.8941" in text and "/ 1.1249" in text and "Reduced run" in text
    assert rows["ms"]["ms_loss_plain"] is not None and "`ms_loss_plain`" in text  # the MS cells' second protocol
    assert f"{rows['ms']['ms_loss_plain']:.4f}" in text
    # a second call reuses both finished runs instead of training again
    logs.clear()
    exp.run_table1(cfg, log=logs.append)
    assert not any(line.startswith("[") for line in logs)


def _cell() -> dict:
    return {"dataset": "mnist", "model": "inn2", "loss": "ce", "preset": "paper",
            "overrides": {"epochs": 1, "max_train": 300, "max_test": 500, "threads": 1}}


def test_a_cell_another_live_process_is_training_is_waited_for_not_trained_twice(shared_data, tmp_path):
    first = exp.run_cells([_cell()], shared_data, tmp_path, log=lambda s: None)
    work = tmp_path / "shared-work"
    work.mkdir()
    # stands in for the process that holds the cell: an flock on its own open file description
    holder = os.open(work / "mnist-inn2-ce.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)

    def other_process_finishes():
        time.sleep(1.0)
        for suffix in (".safetensors", ".metrics.json"):  # the metrics last and whole, as the trainer does
            shutil.copy(tmp_path / f"mnist-inn2-ce{suffix}", work / "partial")
            (work / "partial").replace(work / f"mnist-inn2-ce{suffix}")
        (work / "mnist-inn2-ce.lock").unlink()
        os.close(holder)

    finisher = threading.Thread(target=other_process_finishes)
    finisher.start()
    logs: list[str] = []
    try:
        rows = exp.run_cells([_cell()], shared_data, work, log=logs.append, poll_seconds=0.2)
    finally:
        finisher.join()
    assert any(line.startswith("waiting for mnist-inn2-ce") for line in logs)
    assert not any(line.startswith("[") for line in logs)  # it did not train the cell itself
    assert rows == first


def test_a_lock_left_by_a_dead_process_is_taken_over(shared_data, tmp_path):
    holds_then_dies = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
                       "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
                       "print('held', flush=True); time.sleep(60)")
    gone = subprocess.Popen([sys.executable, "-c", holds_then_dies, str(tmp_path / "mnist-inn2-ce.lock")],
                            stdout=subprocess.PIPE, text=True)
    assert gone.stdout.readline().strip() == "held"
    gone.kill()  # SIGKILL: no chance to remove its lock file
    gone.wait()
    gone.stdout.close()
    assert (tmp_path / "mnist-inn2-ce.lock").exists()
    logs: list[str] = []
    rows = exp.run_cells([_cell()], shared_data, tmp_path, log=logs.append, poll_seconds=0.2)
    assert "[1/1] mnist-inn2-ce" in logs and not any(line.startswith("waiting") for line in logs)
    assert rows[0]["parameters"] == 560
    assert not (tmp_path / "mnist-inn2-ce.lock").exists()  # released once the run is written


def test_a_reduced_table1_run_writes_into_its_work_folder_not_over_the_full_table(shared_data, tmp_path):
    # The smallest real run, from a folder that has docs/results/ as the repository does: a reduced run used
    # to replace docs/results/paper-table1.{md,json}, the committed 48-run table, without a word.
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    (results / "paper-table1.md").write_text("the full table")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "cli", "experiment", "table1", "--data-root", str(shared_data),
                        "--datasets", "mnist", "--models", "inn2", "--losses", "ce", "--epochs", "1",
                        "--max-train", "100", "--max-test", "100", "--threads", "1", "--work-dir", "work"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (results / "paper-table1.md").read_text() == "the full table"
    assert not (results / "paper-table1.json").exists()
    assert json.loads((tmp_path / "work" / "paper-table1.json").read_text())["results"][0]["model"] == "inn2"
    assert "wrote work/paper-table1.md and work/paper-table1.json" in r.stdout
    assert ("a reduced run (--epochs 1, --max-train 100, --max-test 100, --datasets mnist, --losses ce, --models "
            "inn2), so its tables went to its work folder, not docs/results/") in r.stdout
    assert "give --out-dir docs/results to write them there" in r.stdout


def test_only_the_full_experiment_writes_into_docs_results_unless_out_dir_is_given(tmp_path):
    from cli import build_parser
    from cli._train import _experiment_config

    def where(*argv):
        args = build_parser().parse_args(["experiment", *argv, "--work-dir", str(tmp_path)])
        return _experiment_config(args).results_dir()

    assert where("table1") == where("table1", "--threads", "1") == Path("docs/results")
    # the paper's own settings spelt out are the full run too
    assert where("table1", "--epochs", "20,20,25", "--datasets", "cifar10,mnist,fashion-mnist",
                 "--losses", "ms,ce", "--preset", "paper") == Path("docs/results")
    for reduced in (["--epochs", "2"], ["--max-train", "5000"], ["--max-test", "100"], ["--datasets", "mnist"],
                    ["--models", "inn2"], ["--losses", "ce"], ["--preset", "default"]):
        assert where("table1", *reduced) == tmp_path, reduced
        assert where("table1", *reduced, "--out-dir", "docs/results") == Path("docs/results"), reduced
    assert where("ablation", "--datasets", "cifar10", "--preset", "default", "--epochs", "10") == tmp_path
    assert where("ablation", "--models", "inn2") == Path("docs/results")  # ablation has no --models to reduce
    assert where("table2") == Path("docs/results")


def test_an_experiment_config_names_the_setting_that_cannot_be_and_the_command_line_its_option(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown datasets \['svhn'\]; known: mnist, fashion-mnist, cifar10"):
        ExperimentConfig("table1", datasets=["mnist", "svhn"])
    with pytest.raises(ConfigError, match=r"unknown losses \['arcface'\]; known: ce, ms"):
        ExperimentConfig("ablation", losses=["arcface"])
    with pytest.raises(ConfigError, match="epochs has no entry for cifar10"):
        ExperimentConfig("table1", epochs={"mnist": 1, "fashion-mnist": 1})
    with pytest.raises(ConfigError) as exc:
        run_experiment(ExperimentConfig("table1", data_root=tmp_path / "none"))
    assert (exc.value.field, str(exc.value)) == ("data_root", f"data_root {tmp_path / 'none'} is not a folder (it "
                                                              "should hold mnist/, fashion-mnist/, cifar10-jpeg.tar)")
    assert ExperimentConfig("table1").reduced() == []
    assert ExperimentConfig("table2", datasets=["mnist"], epochs={"mnist": 1}).reduced() == []   # trains nothing
    assert ExperimentConfig("ablation", epochs={**ExperimentConfig.PAPER_EPOCHS, "mnist": 2}, max_test=10,
                            losses=["ms"], preset="default").reduced() == ["epochs", "max_test", "losses", "preset"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv, said in [(["--data-root", str(tmp_path / "none")], f"--data-root {tmp_path / 'none'} is not a folder"),
                       (["--datasets", "mnist,svhn"], "unknown datasets ['svhn']; known: mnist, fashion-mnist"),
                       (["--epochs", "1,2"], "--epochs takes N or MNIST,FASHION,CIFAR, got '1,2'"),
                       (["--epochs", "x"], "--epochs takes N or MNIST,FASHION,CIFAR, got 'x'")]:
        r = subprocess.run([sys.executable, "-m", "cli", "experiment", "table1", *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
