"""Architectures of a user's own registered the timm way, and artifacts of them, from a hunt that extended
simsearch as a pytorch-metric-learning / timm user: a network whose output is not (N, embed_dim) is refused
when saved and when loaded, naming both shapes; a builder registered by a plain import records its module
(the artifact's arch_source), and registering it again from the same module (a notebook cell run twice,
importlib.reload) replaces it with a warning."""
from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import model
from model import _artifact, _registry


@pytest.fixture
def registry(tmp_path):
    """The registry as it was before the test: what a test registers does not leak into the others; tmp_path on
    sys.path for the modules a test writes there."""
    model.list_models()
    saved = dict(_registry._MODELS), dict(_registry._SOURCES), dict(_registry._IMPORTED)
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("users_plain_models", None)
    for table, before in zip((_registry._MODELS, _registry._SOURCES, _registry._IMPORTED), saved):
        table.clear()
        table.update(before)


class _Seven(nn.Module):
    """Embeds into 7 dimensions whatever embed_dim it was given."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 7, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def _register_seven():
    def users_seven(in_chans: int = 3, embed_dim: int = 32, **_):
        return _Seven(in_chans)

    model.register_model(users_seven)


def test_save_artifact_refuses_a_network_whose_output_is_not_embed_dim_wide(registry, tmp_path):
    _register_seven()
    net = model.create_model("users_seven", in_chans=3, embed_dim=32)
    meta = model.ArtifactMeta(name="seven", arch="users_seven", embed_dim=32)
    with pytest.raises(model.ArtifactError, match=r"it embeds 2 images as \(2, 7\), not \(2, 32\) as "
                                                  r"meta.embed_dim says"):
        model.save_artifact(tmp_path / "a.safetensors", net, meta)
    assert not (tmp_path / "a.safetensors").exists()


def test_load_artifact_refuses_a_file_whose_network_is_not_embed_dim_wide(registry, tmp_path):
    _register_seven()
    net = model.create_model("users_seven", in_chans=3, embed_dim=32)
    meta = model.ArtifactMeta(name="seven", arch="users_seven", embed_dim=32)
    path = tmp_path / "a.safetensors"
    _artifact._write(path, _artifact._tensors(net.state_dict(), {}), meta)   # as a file written before the check
    with pytest.raises(model.ArtifactError, match=r"architecture 'users_seven' embeds an image as \(1, 7\), not "
                                                  r"the \(1, 32\) its embed_dim says"):
        model.load_artifact(path)


def test_a_bundled_shaped_network_still_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    net = model.create_model("cnn3a", in_chans=1, embed_dim=16)
    meta = model.ArtifactMeta(name="small", arch="cnn3a", in_chans=1, image_size=28, embed_dim=16,
                              mean=[0.5], std=[0.5])
    model.save_artifact(tmp_path / "a.safetensors", net, meta)
    assert model.load_artifact(tmp_path / "a.safetensors").model(torch.zeros(1, 1, 28, 28)).shape == (1, 16)


_PLAIN = """import torch
from torch import nn
from model import register_model


class Net(nn.Module):
    def __init__(self, in_chans=3, embed_dim=16):
        super().__init__()
        self.embed_dim, self.in_chans = embed_dim, in_chans
        self.conv = nn.Conv2d(in_chans, embed_dim, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@register_model
def users_plain(in_chans=3, embed_dim=16, **_):
    return Net(in_chans, embed_dim)
"""


def test_a_builder_registered_by_a_plain_import_records_its_module_and_its_artifact_names_it(registry, tmp_path):
    # arch_source was null, and the load error spoke only of SIMSEARCH_MODEL_MODULES, which Python never reads
    (tmp_path / "users_plain_models.py").write_text(_PLAIN)
    importlib.import_module("users_plain_models")
    assert model.model_source("users_plain") == "users_plain_models"
    meta = model.ArtifactMeta(name="plain", arch="users_plain", arch_source=model.model_source("users_plain"),
                              embed_dim=16)
    model.save_artifact(tmp_path / "p.safetensors", model.create_model("users_plain"), meta)
    code = ("import sys, model\ntry:\n    model.load_artifact(sys.argv[1])\nexcept model.ArtifactError as e:\n"
            "    print(e)\nmodel.import_models('users_plain_models')\n"
            "print(model.load_artifact(sys.argv[1]).meta.arch)")
    fresh = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.safetensors")], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert ("architecture 'users_plain' is not known here (it was registered by 'users_plain_models'; name the "
            "module or .py file that registers it in SIMSEARCH_MODEL_MODULES)") in fresh.stdout, fresh.stderr
    assert "in Python, import it first: model.import_models('users_plain_models')" in fresh.stdout
    assert fresh.stdout.splitlines()[-1] == "users_plain", fresh.stderr


def test_the_same_builder_registered_again_by_its_module_replaces_it_with_a_warning(registry, tmp_path):
    # importlib.reload (or a notebook cell run twice) was "model 'users_plain' is registered twice"
    (tmp_path / "users_plain_models.py").write_text(_PLAIN)
    module = importlib.import_module("users_plain_models")
    with pytest.warns(UserWarning, match="model 'users_plain' registered again by users_plain_models.users_plain: "
                                         "the new builder replaces the old one"):
        module = importlib.reload(module)
    assert _registry._MODELS["users_plain"] is module.users_plain

    def users_plain(**_):   # another function of that name: still refused
        return _Seven()

    with pytest.raises(ValueError, match="model 'users_plain' is registered twice"):
        model.register_model(users_plain)


def test_a_partial_is_refused_saying_what_register_model_takes(registry):
    with pytest.raises(TypeError, match="register_model takes a builder function, registered under its name; .* \\("
                                        "a functools.partial has none"):
        model.register_model(functools.partial(_Seven, 3))
