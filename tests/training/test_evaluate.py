"""Evaluation's similarity statistics (exact over the split, and what they say about the geometry) and the
plain-batch MS figure."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training._evaluate import evaluate_embeddings, ms_loss, ms_loss_plain, similarity_stats


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


def test_plain_ms_is_zero_for_separated_classes_and_one_batch_equals_tf_similaritys_loss_on_the_split():
    from pytorch_metric_learning import losses, miners

    labels = torch.arange(4).repeat_interleave(9)
    assert ms_loss_plain(F.one_hot(labels, 8).float(), labels)["ms_loss_plain"] == 0.0  # nothing is mined
    emb = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(1))
    whole = ms_loss_plain(emb, labels, batch_size=len(labels))
    loss = losses.MultiSimilarityLoss(alpha=2, beta=40, base=0.5)  # TF Similarity's defaults
    expected = loss(emb, labels, miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels)).item()
    assert whole["ms_loss_plain"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert whole["ms_loss_plain_settings"]["beta"] == 40.0


def test_plain_batches_see_fewer_positives_so_the_same_embedding_scores_lower_than_class_balanced():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(10).repeat_interleave(60)
    emb = F.one_hot(labels, 16).float() * 1.5 + torch.randn(len(labels), 16, generator=g)  # overlapping classes
    plain = ms_loss_plain(emb, labels)["ms_loss_plain"]
    balanced = ms_loss(emb, labels)["ms_loss"]
    assert 0 < plain < balanced
    assert ms_loss_plain(emb, labels, batch_size=128)["ms_loss_plain"] > plain  # more pairs, higher figure
    assert "ms_loss_plain" in evaluate_embeddings(emb, labels)
