"""The artifacts shipped in model/weights/: each loads, is named after its file, is under 1 MB of float32
weights, and carries the test scores it was measured with."""
from pathlib import Path

import pytest
import torch

import model

WEIGHTS = sorted((Path(__file__).resolve().parents[2] / "model" / "weights").glob("*.safetensors"))


def test_the_service_default_and_the_three_datasets_are_bundled():
    names = {p.stem for p in WEIGHTS}
    assert {"hybrid1-cifar10", "hybrid1-mnist", "hybrid1-fashion-mnist"} <= names


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
def test_bundled_artifact_loads_embeds_and_records_its_scores(path):
    art = model.load_artifact(path)
    assert art.meta.name == path.stem
    assert model.count_parameters(art.model) * 4 < 1_000_000
    x = torch.rand(2, art.meta.in_chans, art.meta.image_size, art.meta.image_size)
    with torch.no_grad():
        emb = art.model(x)
    assert emb.shape == (2, art.meta.embed_dim) and torch.isfinite(emb).all()
    assert 0.1 < art.meta.metrics["precision_at_1"] <= 1.0
    assert art.meta.metrics["parameters"] == model.count_parameters(art.model)
    # the scores were measured with the test-time augmentation the service applies
    assert art.meta.metrics.get("tta", "none") == art.meta.tta


def test_each_bundled_artifact_is_found_by_its_model_id_and_nothing_else_is():
    for path in WEIGHTS:
        assert model.bundled_artifact(model.load_artifact(path).model_id) == path
    some = model.load_artifact(WEIGHTS[0]).model_id
    name, _, sha = some.rpartition("@")
    assert model.bundled_artifact(f"{name}@{'0' * 12}") is None   # the same name, other weights
    assert model.bundled_artifact(f"other@{sha}") is None
    assert model.bundled_artifact("no id at all") is None
