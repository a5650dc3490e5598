"""simsearch evaluate of a model on the data it was trained on scores the images its training held out: the held-out
share and the --max-test seed default to the artifact's training config, said on the console."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training import evaluate_artifact, preset, train

from .conftest import run_cli


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """A folder of 3 class folders of 12 small images each, no train/ or test/: the test split is held out."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, tint in zip("abc", ((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        (root / c).mkdir()
        for i in range(12):
            noise = rng.integers(0, 60, (16, 16, 3))
            Image.fromarray((noise + tint).clip(0, 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(class_folders, tmp_path_factory):
    """One quick run holding out half of each class (not the default 0.2), its --max-test subset drawn with seed 3."""
    out = tmp_path_factory.mktemp("run") / "photos.safetensors"
    cfg = preset("default", epochs=1, test_fraction=0.5, seed=3, max_test=12, threads=1, batch_size=18,
                 val_fraction=0)
    return train(cfg, class_folders, out, progress=False, log=lambda _: None)


def _scores(m: dict) -> dict:
    return {k: m[k] for k in ("precision_at_1", "r_precision", "mean_average_precision_at_r")}


def test_evaluate_scores_the_test_images_training_held_out_and_drew(trained, class_folders):
    lines: list[str] = []
    res = evaluate_artifact(trained.artifact, class_folders, max_test=12, device="cpu", log=lines.append)
    recorded = json.loads(trained.metrics_path.read_text())
    assert res["dataset"]["test_size"] == recorded["training"]["dataset"]["dataset_test_size"] == 18
    assert _scores(res) == _scores(trained.metrics)
    # the same images: the mistakes (named files) are those training found
    assert res["confident_mistakes"] == recorded["metrics"]["confident_mistakes"]
    assert res["test_split"] == {"test_fraction": 0.5, "seed": 3, "from": {
        "test_fraction": "the artifact's training config", "seed": "the artifact's training config"}}
    assert "test split: 0.5 of each class held out (test_fraction 0.5, the artifact's training config; " \
           "split seed 0)" in lines
    assert "max_test 12: a stratified subset of 12 of the 18 test images drawn with seed 3 (the artifact's " \
           "training config)" in lines


def test_evaluate_takes_a_test_fraction_and_seed_given_over_the_artifacts(trained, class_folders):
    res = evaluate_artifact(trained.artifact, class_folders, test_fraction=0.25, seed=0, device="cpu")
    assert res["dataset"]["test_size"] == 9
    assert res["test_split"]["from"] == {"test_fraction": "given", "seed": "given"}


def test_evaluate_cli_says_where_the_held_out_share_came_from_and_takes_options(trained, class_folders, tmp_path):
    said = run_cli("evaluate", str(trained.artifact), str(class_folders), "--threads", "1", "--quiet",
                   cache=tmp_path / "cache")
    assert said.returncode == 0, said.stderr
    assert "test_fraction 0.5, the artifact's training config" in said.stderr
    assert said.stdout.startswith("18 test images")
    given = run_cli("evaluate", str(trained.artifact), str(class_folders), "--threads", "1", "--quiet",
                    "--test-fraction", "0.25", "--max-test", "6", "--seed", "1", cache=tmp_path / "cache")
    assert given.returncode == 0, given.stderr
    assert "test_fraction 0.25, given" in given.stderr and "drawn with seed 1 (given)" in given.stderr
    refused = run_cli("evaluate", str(trained.artifact), str(class_folders), "--test-fraction", "1",
                      cache=tmp_path / "cache")
    assert refused.returncode == 2 and "--test-fraction is a share of each class, between 0 and 1, got 1.0" \
        in refused.stderr
