"""Architectures of a user's own, registered by a module or .py file that `model.import_models` imports
(what SIMSEARCH_MODEL_MODULES names): built, saved and loaded like the zoo's, and a failing one named."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import model
from model import _registry

from ..user_models import write_user_models


@pytest.fixture
def registry():
    """The registry as it was before the test: what a test imports does not leak into the others."""
    model.list_models()  # the zoo registered first
    saved = dict(_registry._MODELS), dict(_registry._SOURCES), dict(_registry._IMPORTED)
    yield
    for table, before in zip((_registry._MODELS, _registry._SOURCES, _registry._IMPORTED), saved):
        table.clear()
        table.update(before)
    for name in [n for n in sys.modules if n.startswith("simsearch_user_models.")]:
        del sys.modules[name]


def test_a_users_file_registers_its_architecture_once_and_its_artifact_saves_and_loads(registry, tmp_path):
    path = write_user_models(tmp_path / "mine", arch="users_cnn_a")
    assert not model.is_model("users_cnn_a")
    assert model.import_models(f" {path} , ") == ["users_cnn_a"]  # one comma-separated string, as in the setting
    assert model.import_models([str(path)]) == []                 # again: nothing new, no "registered twice"
    assert model.model_source("users_cnn_a") == str(path.resolve()) and model.model_source("hybrid1") is None
    assert "users_cnn_a" in model.list_models()
    net = model.create_model("users_cnn_a", in_chans=3, embed_dim=32)
    meta = model.ArtifactMeta(name="mine", arch="users_cnn_a", arch_source=model.model_source("users_cnn_a"),
                              embed_dim=32)
    model.save_artifact(tmp_path / "mine.safetensors", net, meta)
    art = model.load_artifact(tmp_path / "mine.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(art.model(x), net.eval()(x)) and art.meta.arch_source == str(path.resolve())


def test_an_artifact_of_an_architecture_not_imported_names_the_file_that_registered_it(registry, tmp_path):
    path = write_user_models(tmp_path / "mine", arch="users_cnn_b")
    model.import_models(str(path))
    meta = model.ArtifactMeta(name="mine", arch="users_cnn_b", arch_source=str(path.resolve()), embed_dim=64)
    model.save_artifact(tmp_path / "b.safetensors", model.create_model("users_cnn_b"), meta)
    code = ("import sys, model\ntry:\n    model.load_artifact(sys.argv[1])\nexcept model.ArtifactError as e:\n"
            "    print(e)\n")
    fresh = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.safetensors")], capture_output=True,
                           text=True, timeout=120)
    assert (f"architecture 'users_cnn_b' is not known here (it was registered by '{path.resolve()}'; name the "
            "module or .py file that registers it in SIMSEARCH_MODEL_MODULES); known: cnn3a") in fresh.stdout


def test_two_files_of_the_same_name_in_two_folders_are_two_modules(registry, tmp_path):
    first = write_user_models(tmp_path / "team_a", arch="users_cnn_d")
    second = write_user_models(tmp_path / "team_b", arch="users_cnn_e")   # both my_models.py
    assert model.import_models([str(first), str(second)]) == ["users_cnn_d", "users_cnn_e"]
    modules = {sys.modules[n].__file__ for n in sys.modules if n.startswith("simsearch_user_models.my_models")}
    assert modules == {str(first.resolve()), str(second.resolve())}


def test_a_module_that_cannot_be_imported_is_named_with_its_error_and_registers_nothing(registry, tmp_path):
    with pytest.raises(model.ModelModuleError, match="model module 'no_such_module_here': ModuleNotFoundError"):
        model.import_models("no_such_module_here")
    with pytest.raises(model.ModelModuleError, match=r"model module '.*/missing\.py': no such file"):
        model.import_models(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken_models.py"
    broken.write_text("from model import register_model\n\n@register_model\ndef users_cnn_c():\n    pass\n\n"
                      "@register_model\ndef hybrid1():\n    pass\n")
    with pytest.raises(model.ModelModuleError, match=r"broken_models\.py': ValueError: model 'hybrid1' is "
                                                     r"registered twice"):
        model.import_models(str(broken))
    assert not model.is_model("users_cnn_c")  # what it registered before failing is forgotten
    assert not [n for n in sys.modules if n.startswith("simsearch_user_models.broken_models")]
    assert model.create_model("hybrid1").embed_dim == 256  # and the zoo's own is untouched
