"""The PDDM unit on real embeddings: shapes, symmetry, gradients, re-ranking and the artifact head."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model
from model import PDDM


def read_mnist_test(root: Path, n: int) -> tuple[list[Image.Image], np.ndarray]:
    """The first `n` MNIST test images (PIL, mode L) and labels, read straight from the IDX files."""
    images = np.frombuffer(gzip.decompress((root / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()),
                           np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    labels = np.frombuffer(gzip.decompress((root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)[:n].astype(np.int64)
    return [Image.fromarray(im) for im in images], labels


@pytest.fixture(scope="module")
def embeddings(shared_data, hybrid1_artifact) -> tuple[torch.Tensor, torch.Tensor]:
    """200 real MNIST test digits embedded by the (seeded, untrained) Hybrid-1 test artifact."""
    images, labels = read_mnist_test(shared_data, 200)
    vecs = model.Embedder.from_file(hybrid1_artifact, device="cpu").embed(images)
    return torch.from_numpy(vecs), torch.from_numpy(labels)


def test_scores_have_the_broadcast_shape_of_the_pairs(embeddings):
    f, _ = embeddings
    torch.manual_seed(0)
    pddm = PDDM(embed_dim=f.shape[1], hidden=32)
    assert pddm(f[:10], f[10:20]).shape == (10,)
    assert pddm(f[:3, None, :], f[None, :50, :]).shape == (3, 50)
    assert pddm.pairwise(f[:40]).shape == (40, 40)


def test_score_is_symmetric_in_the_pair(embeddings):
    f, _ = embeddings
    torch.manual_seed(0)
    pddm = PDDM(embed_dim=f.shape[1])
    s_ij, s_ji = pddm(f[:100], f[100:]), pddm(f[100:], f[:100])
    assert torch.allclose(s_ij, s_ji, atol=1e-6)
    assert s_ij.std() > 0  # not a constant
    full = pddm.pairwise(f[:60])
    assert torch.allclose(full, full.T)
    assert torch.allclose(full, pddm(f[:60, None, :], f[None, :60, :]), atol=1e-5)


def test_gradients_reach_every_parameter_and_both_inputs(embeddings):
    f, _ = embeddings
    torch.manual_seed(0)
    pddm = PDDM(embed_dim=f.shape[1])
    a, b = f[:50].clone().requires_grad_(), f[50:100].clone().requires_grad_()
    pddm(a, b).sum().backward()
    for name, p in pddm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_rerank_orders_candidates_by_descending_score(embeddings):
    f, _ = embeddings
    torch.manual_seed(0)
    pddm = PDDM(embed_dim=f.shape[1])
    queries, cands = f[:4].numpy(), f[20:120].numpy().reshape(4, 25, -1)
    order, scores = pddm.rerank(queries, cands)
    assert order.shape == scores.shape == (4, 25) and order.dtype == np.int64
    expected = pddm(torch.from_numpy(queries)[:, None, :], torch.from_numpy(cands)).detach().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    for q in range(4):
        assert sorted(order[q].tolist()) == list(range(25))
        assert np.all(np.diff(scores[q][order[q]]) <= 0)
    assert (order != np.arange(25)).any()  # the candidates' input order is not kept
    one_order, one_scores = pddm.rerank(queries[0], cands[0])
    np.testing.assert_array_equal(one_order, order[0])
    np.testing.assert_allclose(one_scores, scores[0], atol=1e-6)


def test_rerank_refuses_mismatched_dimensions(embeddings):
    f, _ = embeddings
    pddm = PDDM(embed_dim=f.shape[1])
    with pytest.raises(ValueError, match="rerank wants"):
        pddm.rerank(f[:2].numpy(), f[:10, :128].numpy().reshape(2, 5, 128))


def test_artifact_carries_the_head_and_rebuilds_the_same_scores(embeddings, hybrid1_artifact, tmp_path):
    f, _ = embeddings
    torch.manual_seed(1)
    pddm = PDDM(embed_dim=f.shape[1], hidden=64)
    art = model.load_artifact(hybrid1_artifact)
    assert PDDM.from_artifact(art) is None  # no head in the plain artifact
    meta = art.meta.model_copy(update={"heads": {"pddm": pddm.build_args}})
    path = model.save_artifact(tmp_path / "with-pddm.safetensors", art.model, meta, heads={"pddm": pddm})
    loaded = PDDM.from_artifact(model.load_artifact(path))
    assert loaded is not None and loaded.hidden == 64 and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(f[:30], f[30:60]), pddm(f[:30], f[30:60]))


def test_head_of_the_wrong_size_is_an_artifact_error(embeddings):
    pddm = PDDM(embed_dim=256, hidden=64)
    with pytest.raises(model.ArtifactError, match="pddm"):
        PDDM.from_state({"embed_dim": 256, "hidden": 32}, pddm.state_dict())
