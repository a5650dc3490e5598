"""Architectures of a user's own registered the timm way, and artifacts of them, from a hunt that extended
simsearch as a pytorch-metric-learning / timm user: a network whose output is not (N, embed_dim) is refused
when saved and when loaded, naming both shapes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import model
from model import _artifact, _registry


@pytest.fixture
def registry():
    """The registry as it was before the test: what a test registers does not leak into the others."""
    model.list_models()
    saved = dict(_registry._MODELS), dict(_registry._SOURCES), dict(_registry._IMPORTED)
    yield
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
