"""Evaluation's similarity statistics: exact over the split, and what they say about the geometry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training._evaluate import evaluate_embeddings, similarity_stats


def test_similarity_stats_equal_the_mean_over_every_pair():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 0, 3, 1, 1, 0, 3, 7, 7, 1, 0, 3])  # unsorted, uneven, sparse class ids
    emb = torch.randn(len(labels), 5, generator=g) * 4 + 1
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    same = labels[:, None] == labels[None]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    got = similarity_stats(emb, labels)
    assert got["mean_cos_same_class"] == pytest.approx(s[same & off].mean().item(), abs=1e-6)
    assert got["mean_cos_other_class"] == pytest.approx(s[~same].mean().item(), abs=1e-6)


def test_orthogonal_classes_give_one_and_zero_and_a_shared_offset_raises_both():
    labels = torch.arange(4).repeat_interleave(5)
    separated = F.one_hot(labels, 8).float()
    got = similarity_stats(separated, labels)
    assert got["mean_cos_same_class"] == pytest.approx(1.0) and got["mean_cos_other_class"] == pytest.approx(0.0)
    cone = similarity_stats(separated + 2.0, labels)  # the same classes inside a narrow cone
    assert cone["mean_cos_other_class"] > 0.9 and cone["mean_cos_same_class"] == pytest.approx(1.0)
    assert "mean_cos_other_class" in evaluate_embeddings(separated, labels)
