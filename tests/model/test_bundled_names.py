"""model.find_artifact: a bundled artifact given by its name (the operator need not know the site-packages path),
a path that exists always winning, and a name that is neither answered with the bundled names nearest first."""
import shutil
from pathlib import Path

import pytest

import model

WEIGHTS = Path(model.__file__).resolve().parent / "weights"


def test_a_bundled_artifact_is_found_by_its_name_with_or_without_the_file_ending(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no file of that name here
    assert model.find_artifact("hybrid1-fashion-mnist") == WEIGHTS / "hybrid1-fashion-mnist.safetensors"
    assert model.find_artifact("hybrid1-mnist.safetensors") == WEIGHTS / "hybrid1-mnist.safetensors"
    assert model.read_meta(model.find_artifact("hybrid1-res-cifar10")).name == "hybrid1-res-cifar10"


def test_a_file_that_exists_wins_over_the_bundled_artifact_of_that_name(hybrid1_artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(hybrid1_artifact, tmp_path / "hybrid1-mnist")
    assert model.find_artifact("hybrid1-mnist") == Path("hybrid1-mnist")
    assert model.read_meta(model.find_artifact("hybrid1-mnist")).name == "hybrid1-test"
    assert model.find_artifact(hybrid1_artifact) == hybrid1_artifact


def test_the_name_inside_a_bundled_artifact_finds_it_when_its_file_is_named_otherwise(
        hybrid1_artifact, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(hybrid1_artifact, weights / "renamed-on-disk.safetensors")   # its metadata says hybrid1-test
    monkeypatch.setattr("model._params.WEIGHTS_DIR", weights)
    monkeypatch.chdir(tmp_path)
    assert model.find_artifact("hybrid1-test") == weights / "renamed-on-disk.safetensors"
    assert model.find_artifact("renamed-on-disk") == weights / "renamed-on-disk.safetensors"


def test_a_name_that_is_neither_a_file_nor_bundled_lists_the_bundled_names_nearest_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(model.ArtifactError) as caught:
        model.find_artifact("hybrid1-fashon-mnist")
    said = str(caught.value)
    assert said.startswith("hybrid1-fashon-mnist: no such model artifact (no such file, nor the name of a bundled "
                           "model); the bundled models (give one by name), nearest first: hybrid1-fashion-mnist, "), \
        said
    assert all(f.stem in said for f in WEIGHTS.glob("*.safetensors"))


def test_a_missing_path_with_a_folder_is_not_looked_up_by_name(tmp_path):
    missing = tmp_path / "hybrid1-mnist.safetensors"
    with pytest.raises(model.ArtifactError, match=rf"^{missing}: no such model artifact; the bundled models "
                                                  r"\(give one by name\), nearest first: hybrid1-mnist, "):
        model.find_artifact(missing)


def test_the_bundled_artifacts_are_listed_by_name_and_nearest_first_to_a_name_given():
    listed = model.bundled_artifacts()
    assert list(listed) == sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))
    assert {"hybrid1-cifar10", "hybrid1-fashion-mnist", "hybrid1-mnist"} <= set(listed)
    assert list(model.bundled_artifacts(nearest_to="/somewhere/hybrid1-cifar.safetensors"))[0] == "hybrid1-cifar10"
