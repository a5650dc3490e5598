"""Centring: a shift folded into the embedding layer moves every embedding by it and leaves the CE head's logits
alone; the share is chosen by precision@1 on the embeddings given."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import model
from training._centre import CENTRE_CHOICES, can_centre, choose_centre, fold_shift, mean_embedding
from training._evaluate import embed_images, head_logits


def _images(n=24, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_a_folded_shift_moves_every_embedding_by_it_and_the_ce_head_follows():
    torch.manual_seed(0)
    net = model.create_model("hybrid1").eval()
    head = {"weight": torch.randn(10, 256), "bias": torch.randn(10)}
    images, mean, std = _images(), [0.5] * 3, [0.25] * 3
    before = embed_images(net, images, mean, std, tta="hflip")
    shift = torch.randn(256)
    new_head = fold_shift(net, shift, head)
    after = embed_images(net, images, mean, std, tta="hflip")
    assert torch.allclose(after, before - shift, atol=1e-5)
    assert torch.allclose(head_logits(after, new_head), head_logits(before, head), atol=1e-4)
    assert torch.equal(new_head["weight"], head["weight"])
    assert fold_shift(net, torch.zeros(256)) is None  # no head, nothing to return
    # the mean embedding moves with it: taking off a share s of the mean leaves (1 - s) of it
    m = mean_embedding(net, images, mean, std, tta="hflip")
    fold_shift(net, 0.75 * m)
    assert torch.allclose(mean_embedding(net, images, mean, std, tta="hflip"), 0.25 * m, atol=1e-5)


def test_mean_embedding_samples_at_most_limit_images_the_same_way_each_time():
    net = model.create_model("hybrid1").eval()
    images = _images(40)
    one = mean_embedding(net, images, [0.5] * 3, [0.25] * 3, limit=16)
    assert torch.equal(one, mean_embedding(net, images, [0.5] * 3, [0.25] * 3, limit=16))
    assert not torch.allclose(one, mean_embedding(net, images, [0.5] * 3, [0.25] * 3))


def test_a_model_without_a_linear_embedding_layer_is_refused_by_name():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    assert not can_centre(net) and can_centre(model.create_model("hybrid1"), ["ce_head"])
    assert not can_centre(model.create_model("hybrid1"), ["ce_head", "pddm"])
    with pytest.raises(ValueError, match="cannot fold a shift into Sequential"):
        fold_shift(net, torch.zeros(4))


def test_the_share_with_the_best_precision_is_chosen_and_the_smallest_on_a_tie():
    labels = torch.arange(4).repeat_interleave(10)
    separated = F.one_hot(labels, 8).float()
    share, scores = choose_centre(separated, labels, separated.mean(0))
    assert share == 0.0 and list(scores) == [str(a) for a in CENTRE_CHOICES] and set(scores.values()) == {1.0}
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat_interleave(40)
    common = F.normalize(torch.randn(16, generator=g), dim=0)
    emb = F.one_hot(labels, 16).float() + 0.35 * torch.randn(len(labels), 16, generator=g) + 3 * common
    share, scores = choose_centre(emb, labels, emb.mean(0))
    assert scores[str(share)] == max(scores.values()) > scores["0.0"]  # here taking the mean off pays
