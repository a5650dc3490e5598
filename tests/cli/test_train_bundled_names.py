"""`simsearch train --init NAME` and `--teacher NAME`: a bundled artifact given by its name, as serve --model,
index build --model, model-info, model-export and evaluate take one (model.find_artifact); a name that is neither a
file nor a bundled model, and a path with nothing there, are one line naming the option and the bundled names
nearest first, said before the dataset is read or anything trained. Tiny runs: 1 epoch on 200 MNIST images."""
from __future__ import annotations

import pytest

import model
from tests.training.conftest import run_cli

TINY = ["--epochs", "1", "--max-train", "200", "--max-test", "100", "--batch-size", "32", "--threads", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One dataset cache for the module's runs (MNIST decoded once)."""
    return tmp_path_factory.mktemp("cache")


def test_init_and_teacher_take_a_bundled_model_by_name(shared_data, tmp_path, cache):
    out = tmp_path / "tuned.safetensors"
    r = run_cli("train", str(shared_data / "mnist"), "--out", str(out), "--init", "hybrid1-mnist", "--teacher",
                "hybrid1-mnist", *TINY, cache=cache)
    assert r.returncode == 0, r.stderr
    bundled = model.bundled_artifacts()["hybrid1-mnist"]
    made, started = model.read_meta(out), model.read_meta(bundled)
    bundled_id = model.load_artifact(bundled).model_id
    assert made.training["init_from"] == bundled_id   # its weights started from the bundled model's
    assert made.training["teachers"] == [bundled_id]   # and it learnt from it
    assert (made.arch, made.arch_kwargs, made.embed_dim) == (started.arch, started.arch_kwargs, started.embed_dim)


@pytest.mark.parametrize("option", ["--init", "--teacher"])
def test_an_unknown_name_or_a_missing_path_is_one_line_naming_the_nearest_bundled_names(shared_data, tmp_path,
                                                                                          cache, option):
    out = tmp_path / "m.safetensors"
    r = run_cli("train", str(shared_data / "mnist"), "--out", str(out), option, "hybrid1-mnst", *TINY, cache=cache)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{option}: hybrid1-mnst: no such model artifact (no such file, nor the name of a bundled model)" \
        in r.stderr, r.stderr
    assert "nearest first: hybrid1-mnist, " in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    missing = tmp_path / "nowhere" / "teacher.safetensors"
    r = run_cli("train", str(shared_data / "mnist"), "--out", str(out), option, str(missing), *TINY, cache=cache)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{option}: {missing}: no such model artifact; the bundled models" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr   # said up front: no teacher embedded anything
    assert not out.exists()
