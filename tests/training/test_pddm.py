"""PDDM training: the hard quadruplet miner against brute force, the joint loss learning on real
digits, and a short `simsearch train --loss pddm` run writing an artifact with the PDDM head."""
from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model import PDDM
from training._pddm import PDDMLoss, mine_quadruplets

REPO = Path(__file__).resolve().parents[2]


def read_mnist(root: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (uint8 (n, 1, 28, 28)) and labels of an MNIST split, from the IDX files."""
    prefix = "train" if split == "train" else "t10k"
    images = np.frombuffer(gzip.decompress((root / "mnist" / f"{prefix}-images-idx3-ubyte.gz").read_bytes()),
                           np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    labels = np.frombuffer(gzip.decompress((root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)[:n].astype(np.int64)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - 0.1307) / 0.3081


@pytest.fixture(scope="module")
def digit_scores(shared_data):
    """PDDM scores between 96 real MNIST digits embedded by a seeded Hybrid-1, and their labels."""
    torch.manual_seed(0)
    images, labels = read_mnist(shared_data, "test", 96)
    net = model.create_model("hybrid1", in_chans=1).eval()
    pddm = PDDM(embed_dim=256)
    with torch.no_grad():
        scores = pddm.pairwise(torch.nn.functional.normalize(net(normalise(images)), dim=1))
    return scores, labels


def brute_force_quadruplets(scores: torch.Tensor, labels: torch.Tensor, per: str) -> list[tuple[float, float, float]]:
    """(S(i,j), S(i,k), S(j,l)) of the hard quadruplets, by looping over every pair."""
    s, y, n = scores.tolist(), labels.tolist(), len(labels)
    groups = [None] if per == "batch" else sorted(set(y))
    out = []
    for c in groups:
        pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if y[i] == y[j] and (c is None or y[i] == c)]
        if not pairs:
            continue
        i, j = min(pairs, key=lambda p: s[p[0]][p[1]])
        neg_i = max(s[i][k] for k in range(n) if y[k] != y[i])
        neg_j = max(s[j][k] for k in range(n) if y[k] != y[j])
        out.append((s[i][j], neg_i, neg_j))
    return sorted(out)


@pytest.mark.parametrize("per", ["class", "batch"])
def test_miner_picks_the_hardest_positive_pair_and_hardest_negatives(digit_scores, per):
    scores, labels = digit_scores
    quads = mine_quadruplets(scores, labels, per)
    assert len(quads) == (len(torch.unique(labels)) if per == "class" else 1)
    for i, j, k, l in quads.tolist():
        assert i != j and labels[i] == labels[j] and labels[k] != labels[i] and labels[l] != labels[j]
    mined = sorted((scores[i, j].item(), scores[i, k].item(), scores[j, l].item()) for i, j, k, l in quads.tolist())
    np.testing.assert_allclose(np.array(mined), np.array(brute_force_quadruplets(scores, labels, per)), rtol=1e-6)


def test_miner_returns_nothing_without_positive_pairs_or_negatives(digit_scores):
    scores, labels = digit_scores
    distinct = torch.tensor([labels.tolist().index(c) for c in range(10)])  # one digit of each class
    assert mine_quadruplets(scores[distinct][:, distinct], labels[distinct]).shape == (0, 4)
    one_class = torch.nonzero(labels == labels[0]).flatten()
    assert mine_quadruplets(scores[one_class][:, one_class], labels[one_class]).shape == (0, 4)


def test_joint_loss_decreases_on_real_digits(shared_data):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    images, labels = read_mnist(shared_data, "train", 2000)
    # a class-balanced batch: 8 of each digit
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:8] for c in range(10)])
    x, y = normalise(images[idx]), labels[idx]
    # Hybrid-1 with BatchNorm: the plain one starts with all embeddings nearly parallel (cosine 0.999
    # on MNIST) and needs more steps than a unit test has before any loss can move.
    net = model.create_model("hybrid1", in_chans=1, norm=True)
    loss_fn = PDDMLoss(embed_dim=256, warmup_steps=0)
    pddm_before = {k: v.clone() for k, v in loss_fn.pddm.state_dict().items()}
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=2e-3)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        history.append(loss_fn.last)
    assert history[0]["quadruplets"] == 10
    first, last = np.mean([h["total"] for h in history[:3]]), np.mean([h["total"] for h in history[-3:]])
    assert last < 0.7 * first, [round(h["total"], 3) for h in history]
    assert np.mean([h["pair_logistic"] for h in history[-3:]]) < np.mean([h["pair_logistic"] for h in history[:3]])
    assert any(not torch.equal(v, loss_fn.pddm.state_dict()[k]) for k, v in pddm_before.items())


def test_warm_up_trains_the_embedding_loss_alone_then_mines(shared_data):
    torch.manual_seed(0)
    images, labels = read_mnist(shared_data, "train", 1000)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:4] for c in range(10)])
    x, y = normalise(images[idx]), labels[idx]
    net = model.create_model("hybrid1", in_chans=1)
    loss_fn = PDDMLoss(embed_dim=256, warmup_steps=2)
    for step in range(1, 4):
        loss_fn.zero_grad()
        emb = net(x)
        loss = loss_fn(emb, y)
        loss.backward()
        pddm_grad = sum(float(p.grad.abs().sum()) for p in loss_fn.pddm.parameters() if p.grad is not None)
        if step <= 2:
            assert loss_fn.last["quadruplets"] == 0 and pddm_grad == 0
            assert loss.item() == pytest.approx(loss_fn.embedding_loss(emb, y).item(), rel=1e-5)
        else:
            assert loss_fn.last["quadruplets"] == 10 and pddm_grad > 0
    assert int(loss_fn.steps) == 3  # counted in the state dict, so a resumed run keeps its place


def test_loss_records_the_pddm_head_for_the_artifact():
    loss_fn = PDDMLoss(embed_dim=64, hidden=16)
    assert set(loss_fn.heads()) == {"pddm"} and loss_fn.heads()["pddm"] is loss_fn.pddm
    meta = loss_fn.head_meta()["pddm"]
    assert meta["type"] == "pddm" and meta["embed_dim"] == 64 and meta["hidden"] == 16
    with pytest.raises(ValueError, match="per must be"):
        PDDMLoss(per="anchor")


@pytest.mark.slow
def test_train_with_loss_pddm_writes_an_artifact_with_the_pddm_head(shared_data, tmp_path):
    out = tmp_path / "pddm-mnist.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIMSEARCH_CACHE": os.environ.get(
        "SIMSEARCH_CACHE", str(Path.home() / ".cache" / "simsearch"))}
    cmd = [sys.executable, "-m", "cli", "train", str(shared_data / "mnist"), "--loss", "pddm", "--epochs", "1",
           "--max-train", "400", "--threads", "1", "--set", 'loss_kwargs={"warmup_steps": 1}', "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    art = model.load_artifact(out)
    assert art.meta.training["config"]["loss"] == "pddm"
    assert art.meta.training["config"]["loss_kwargs"] == {"warmup_steps": 1}  # so the run mined and used E_m
    assert art.meta.heads["pddm"]["type"] == "pddm"
    # the PDDM head reads the embeddings as they are, so they are never centred, by default or on request
    assert "centre" not in art.meta.training
    refused = subprocess.run([sys.executable, "-m", "cli", "evaluate", str(out), str(shared_data / "mnist"),
                              "--centre", "0.5", "--max-test", "100"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "cannot centre" in refused.stderr and "'pddm'" in refused.stderr
    pddm = PDDM.from_artifact(art)
    assert pddm is not None
    images, _ = read_mnist(shared_data, "test", 20)
    vecs = model.Embedder(art, device="cpu").embed_arrays(images.numpy())
    order, scores = pddm.rerank(vecs[0], vecs[1:])
    assert order.shape == (19,) and np.isfinite(scores).all()
