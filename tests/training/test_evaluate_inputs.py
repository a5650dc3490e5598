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


# ---- queries scored against a separate reference set (a gallery) -----------------------------------------------

REFERENCE = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
REFERENCE_LABELS = [0, 0, 1, 1]


def test_a_query_scores_one_when_its_nearest_reference_item_is_of_its_class_and_zero_when_not():
    # [1, 0] (class 0) is a reference item of its own class; [1, 0.05] (class 1) lies nearest the class-0 items,
    # both of them before either class-1 item, so its precision@1, R-precision (R = 2) and MAP@R are all 0
    right, wrong = [[1.0, 0.0]], [[1.0, 0.05]]
    for queries, labels, want in ((right, [0], 1.0), (wrong, [1], 0.0), (right + wrong, [0, 1], 0.5)):
        got = training.evaluate_embeddings(np.array(queries, dtype=np.float32), labels, reference=REFERENCE,
                                           reference_labels=REFERENCE_LABELS)
        assert got["precision_at_1"] == want
        assert got["r_precision"] == want and got["mean_average_precision_at_r"] == want
        assert got["test_size"] == len(labels) and got["reference_size"] == 4
        assert got["scored_queries"] == len(labels) and got["unscored_classes"] == {}
        assert "ms_loss" not in got and "per_class" not in got   # figures of a set scored against itself


def test_a_set_scored_alone_leaves_each_item_out_but_as_its_own_reference_finds_each_item_itself():
    # leave-one-out: [1, 0] and [0.9, 0.1] (class 0) each lie nearest [1, 0.05] (class 1), which lies nearest
    # [1, 0]; only the two other class-1 items find their class: 2 of 5
    vectors = np.vstack([REFERENCE, [[1.0, 0.05]]]).astype(np.float32)
    labels = REFERENCE_LABELS + [1]
    alone = training.evaluate_embeddings(vectors, labels)
    assert alone["precision_at_1"] == pytest.approx(0.4)
    assert alone["precision_at_1"] == training.retrieval_metrics(vectors, labels)["precision_at_1"]
    assert {"ms_loss", "per_class", "match_thresholds"} <= set(alone) and "reference_size" not in alone
    itself = training.evaluate_embeddings(vectors, labels, reference=vectors, reference_labels=labels)
    assert itself["precision_at_1"] == 1.0


def test_real_vectors_against_a_reference_score_what_a_brute_force_nearest_neighbour_finds(embedded):
    vectors, names = embedded
    first = np.array([names[:i].count(n) < 5 for i, n in enumerate(names)])   # 5 queries of each class
    queries, reference = vectors[first], vectors[~first]
    query_names, reference_names = [n for n, q in zip(names, first) if q], [n for n, q in zip(names, first) if not q]
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)   # noqa: E731
    nearest = (unit(queries) @ unit(reference).T).argmax(1)
    by_hand = np.mean([reference_names[j] == n for j, n in zip(nearest, query_names)])
    got = training.evaluate_embeddings(queries, query_names, reference=reference, reference_labels=reference_names)
    assert got["precision_at_1"] == pytest.approx(by_hand) and 0.3 < by_hand < 1.0
    ids = sorted(set(names))
    as_ids = training.evaluate_embeddings(torch.from_numpy(queries), torch.tensor([ids.index(n) for n in query_names]),
                                          reference=torch.from_numpy(reference),
                                          reference_labels=[ids.index(n) for n in reference_names])
    assert as_ids["precision_at_1"] == got["precision_at_1"]


def test_a_query_class_that_no_reference_item_has_is_named_and_not_scored():
    # numbered apart, "dog" (the queries' second name) and "b" (the reference's) would both be class 1
    queries = np.array([[1.0, 0.0], [0.1, 0.9]], dtype=np.float32)
    got = training.evaluate_embeddings(queries, ["a", "dog"], reference=REFERENCE[[0, 3]], reference_labels=["a", "b"])
    assert got["unscored_classes"] == {"dog": "not in the reference"} and got["scored_queries"] == 1
    assert got["precision_at_1"] == 1.0
    text = training.format_metrics(got)
    assert text.startswith("2 queries against 2 reference items (1 scored; the other 1 have no reference item of")
    assert "1 class not scored (none in the reference): dog (not in the reference)" in text


def test_a_reference_that_does_not_go_with_the_queries_is_refused_naming_it():
    queries, labels = REFERENCE[:2], [0, 0]
    with pytest.raises(ValueError, match="reference vectors of dimension 3 for queries of dimension 2"):
        training.evaluate_embeddings(queries, labels, reference=np.ones((4, 3), np.float32), reference_labels=[0] * 4)
    with pytest.raises(ValueError, match=r"reference_labels of shape \(3,\) for 4 reference vectors"):
        training.evaluate_embeddings(queries, labels, reference=REFERENCE, reference_labels=[0, 0, 1])
    with pytest.raises(ValueError, match=r"reference vectors: none given \(0 rows\)"):
        training.evaluate_embeddings(queries, labels, reference=REFERENCE[:0], reference_labels=[])
    with pytest.raises(TypeError, match="reference without reference_labels"):
        training.evaluate_embeddings(queries, labels, reference=REFERENCE)
    with pytest.raises(TypeError, match="reference_labels without reference"):
        training.evaluate_embeddings(queries, labels, reference_labels=REFERENCE_LABELS)
    with pytest.raises(TypeError, match="labels are class ids and reference_labels class names"):
        training.evaluate_embeddings(queries, labels, reference=REFERENCE, reference_labels=list("aabb"))
    # no query of a class the reference has: pml asked FAISS for 0 neighbours ("'k > 0' failed")
    with pytest.raises(ValueError, match=r"no query's class is in the reference \(queries: dog; reference: a, b\)"):
        training.evaluate_embeddings(queries, ["dog", "dog"], reference=REFERENCE, reference_labels=list("aabb"))
