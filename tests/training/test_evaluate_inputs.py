"""training.evaluate_embeddings takes what model.Embedder gives (numpy vectors) with class ids or names, and
calibrates a max_distance for the target precisions asked for."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import model
import training


@pytest.fixture(scope="module")
def embedded(shared_data) -> tuple[np.ndarray, list[str]]:
    """The bundled CIFAR-10 model's vectors of 15 real test images of each of 4 classes, and their class names."""
    want, images, names = ("airplane", "cat", "ship", "truck"), [], []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and parts[1:2] == ["test"] and parts[2] in want and names.count(parts[2]) < 15:
                images.append(Image.open(tar.extractfile(m)).convert("RGB"))
                names.append(parts[2])
            if len(names) == 60:
                break
    vectors = model.Embedder.from_file(model.default_artifact_path(), device="cpu").embed(images)
    return vectors, names


def test_numpy_vectors_with_class_names_score_as_tensors_with_class_ids(embedded):
    vectors, names = embedded
    ids = torch.tensor([sorted(set(names)).index(n) for n in names])
    from_numpy = training.evaluate_embeddings(vectors, names)
    from_torch = training.evaluate_embeddings(torch.from_numpy(vectors), ids, class_names=sorted(set(names)))
    assert from_numpy["precision_at_1"] == from_torch["precision_at_1"] > 0.4
    assert from_numpy["match_thresholds"] == from_torch["match_thresholds"]
    assert {c["class"] for c in from_numpy["per_class"]} == set(names)   # the names name the classes
    assert training.retrieval_metrics(vectors, names)["precision_at_1"] == from_numpy["precision_at_1"]


def test_the_target_precisions_asked_for_are_the_ones_calibrated(embedded):
    vectors, names = embedded
    rows = training.evaluate_embeddings(vectors, names, precisions=(0.5, 0.8))["match_thresholds"]
    assert [r["target_precision"] for r in rows] == [0.5, 0.8]
    assert rows[0]["max_distance"] is not None and rows[0]["precision"] >= 0.5


@pytest.mark.parametrize("precisions", [(0.9, 1.5), (0,), ()])
def test_a_precision_outside_zero_to_one_is_refused_naming_it(embedded, precisions):
    vectors, names = embedded
    with pytest.raises(ValueError, match=rf"precisions \[{', '.join(map(str, precisions))}\]"):
        training.evaluate_embeddings(vectors, names, precisions=precisions)


def test_labels_of_another_length_or_kind_are_refused_naming_them(embedded):
    vectors, names = embedded
    with pytest.raises(ValueError, match=r"labels of shape \(59,\) for 60 embeddings"):
        training.evaluate_embeddings(vectors, names[:-1])
    with pytest.raises(TypeError, match="labels of dtype float64"):
        training.evaluate_embeddings(vectors, np.zeros(60))
    with pytest.raises(TypeError, match="embeddings: a torch tensor or numpy array"):
        training.evaluate_embeddings(vectors.tolist(), names)
