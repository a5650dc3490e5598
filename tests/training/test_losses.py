"""The loss registry and what each loss computes."""
from __future__ import annotations

import pytest
import torch

from training import create_loss, list_losses, register_loss
from training._losses import MetricLoss


def _batch(seed=0, n_per_class=4, classes=4, dim=16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    centres = torch.randn(classes, dim, generator=g)
    return centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g), labels


def test_registry_lists_the_losses_and_names_what_it_does_not_know():
    assert {"ce", "ms", "triplet", "contrastive", "circle", "supcon", "nsoftmax", "arcface"} <= set(list_losses())
    with pytest.raises(ValueError, match="unknown loss 'lifted'; known: .*supcon.*, or several joined by"):
        create_loss("lifted", 16, 4)
    with pytest.raises(ValueError, match="unknown loss 'tripplet' in 'ce\\+tripplet'"):
        create_loss("ce+tripplet", 16, 4)
    with pytest.raises(ValueError, match="loss 'ms\\+ce\\+ms' names 'ms' twice"):
        create_loss("ms+ce+ms", 16, 4)
    with pytest.raises(ValueError, match="supcon_weight must be a number of at least 0, got -1.0"):
        create_loss("ce+supcon", 16, 4, supcon_weight=-1)


def test_an_option_no_part_of_a_built_in_loss_takes_is_refused_with_those_it_takes():
    with pytest.raises(ValueError, match="loss option 'margn' is not one that loss 'ce\\+ms' takes; it takes alpha, "
                                         "base, beta, ce_weight, epsilon, label_smoothing, ms_weight$"):
        create_loss("ce+ms", 16, 4, margn=0.1)
    with pytest.raises(ValueError, match="'temperature' is not one that loss 'triplet' takes; it takes margin, "
                                         "triplets$"):
        create_loss("triplet", 16, 4, temperature=0.1)
    create_loss("triplet", 16, 4, label_smoothing=0.0, margin=0.1)   # the trainer passes label_smoothing to any


def test_ce_has_a_head_that_is_stored_and_matches_plain_cross_entropy():
    emb, labels = _batch()
    loss = create_loss("ce", 16, 4)
    assert set(loss.heads()) == {"ce_head"} and loss.head_meta()["ce_head"]["out_features"] == 4
    expected = torch.nn.functional.cross_entropy(loss.heads()["ce_head"](emb), labels)
    assert torch.allclose(loss(emb, labels), expected)
    assert not loss.needs_pairs


def test_ms_is_small_for_separated_classes_and_large_for_mixed_ones():
    emb, labels = _batch()
    ms = create_loss("ms", 16, 4)
    assert ms.needs_pairs and ms.heads() == {}
    separated = torch.nn.functional.one_hot(labels, 16).float()  # orthogonal per class, identical within
    assert ms(separated, labels).item() < 1e-6  # no hard pairs are mined
    mixed = ms(emb, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]).item()
    assert mixed > 0.3


def test_combined_is_the_weighted_sum_and_gradients_reach_the_head():
    emb, labels = _batch()
    emb.requires_grad_(True)
    both = create_loss("ce+ms", 16, 4, ce_weight=0.5, ms_weight=2.0)
    parts = both.parts
    total = both(emb, labels)
    assert torch.allclose(total, 0.5 * parts["ce"](emb, labels) + 2.0 * parts["ms"](emb, labels))
    total.backward()
    assert both.heads()["ce_head"].weight.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["triplet", "contrastive", "circle", "supcon"])
def test_pair_losses_are_small_for_separated_classes_and_large_for_shuffled_labels(name):
    emb, labels = _batch()
    loss = create_loss(name, 16, 4)
    assert loss.needs_pairs and loss.heads() == {} and list(loss.parameters()) == []
    separated = torch.nn.functional.one_hot(labels, 16).float()   # orthogonal per class, identical within
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    low, high = loss(separated, labels).item(), loss(emb, shuffled).item()
    assert low < 0.25 * high and high > 0.05, (low, high)
    emb.requires_grad_(True)
    loss(emb, shuffled).backward()
    assert emb.grad.abs().sum() > 0


def test_triplet_mining_is_chosen_by_name_and_a_wrong_one_is_named():
    emb, labels = _batch()
    semihard, every = create_loss("triplet", 16, 4, triplets="semihard"), create_loss("triplet", 16, 4)
    assert semihard.miner.type_of_triplets == "semihard" and every.miner.type_of_triplets == "all"
    assert semihard.miner(emb, labels)[0].numel() < every.miner(emb, labels)[0].numel()
    with pytest.raises(ValueError, match="triplets must be one of all, hard, semihard, easy, got 'hardest'"):
        create_loss("triplet", 16, 4, triplets="hardest")


def test_any_losses_joined_by_plus_are_their_weighted_sum_each_given_its_own_options():
    emb, labels = _batch()
    emb.requires_grad_(True)
    both = create_loss("ce+supcon", 16, 4, supcon_weight=0.25, temperature=0.5)
    assert list(both.parts) == ["ce", "supcon"] and both.needs_pairs and set(both.heads()) == {"ce_head"}
    assert both.parts["supcon"].loss.temperature == 0.5
    total = both(emb, labels)
    assert torch.allclose(total, both.parts["ce"](emb, labels) + 0.25 * both.parts["supcon"](emb, labels))
    total.backward()
    assert both.heads()["ce_head"].weight.grad is not None


def test_a_new_loss_plugs_in_by_name():
    @register_loss("test-l2-centre")
    def _factory(embed_dim, num_classes, **_):
        class L2(MetricLoss):
            def forward(self, embeddings, labels):
                return embeddings.pow(2).mean()
        return L2()

    loss = create_loss("test-l2-centre", 8, 2)
    assert loss(torch.ones(3, 8), torch.zeros(3, dtype=torch.long)).item() == 1.0


def test_nsoftmax_scores_cosine_to_class_proxies_so_the_embedding_scale_does_not_matter():
    emb, labels = _batch()
    loss = create_loss("nsoftmax", 16, 4, temperature=0.05)
    assert not loss.needs_pairs and loss.heads() == {}
    # proxies set to the class means: the loss is low, and the same for a rescaled embedding
    means = torch.stack([emb[labels == c].mean(0) for c in range(4)])
    with torch.no_grad():
        loss.loss.W.copy_(means.T)
    fitted = loss(emb, labels)
    assert torch.allclose(loss(emb * 7.0, labels), fitted)
    wrong = loss(emb, (labels + 1) % 4)
    assert fitted.item() < 0.5 < wrong.item()


def test_nsoftmax_plus_ms_is_the_weighted_sum_and_trains_the_proxies():
    emb, labels = _batch()
    emb.requires_grad_(True)
    both = create_loss("nsoftmax+ms", 16, 4, nsoftmax_weight=0.5, ms_weight=2.0)
    assert both.needs_pairs
    total = both(emb, labels)
    assert torch.allclose(total, 0.5 * both.parts["nsoftmax"](emb, labels) + 2.0 * both.parts["ms"](emb, labels))
    total.backward()
    assert both.parts["nsoftmax"].loss.W.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["proxy_anchor", "arcface"])
def test_proxy_losses_are_low_when_embeddings_sit_on_their_class_proxies(name):
    emb, labels = _batch()
    loss = create_loss(name, 16, 4)
    assert not loss.needs_pairs and loss.heads() == {}   # the proxies are not stored with the model
    means = torch.stack([emb[labels == c].mean(0) for c in range(4)])
    proxies = next(iter(loss.parameters()))
    with torch.no_grad():
        proxies.copy_(means if proxies.shape == (4, 16) else means.T)
    fitted, wrong = loss(emb, labels), loss(emb, (labels + 1) % 4)
    assert fitted.item() < wrong.item()
    fitted.backward()
    assert proxies.grad.abs().sum() > 0


def test_proxy_anchor_proxies_learn_a_hundred_times_faster_and_other_losses_at_the_models_rate():
    groups = create_loss("proxy_anchor", 16, 4).param_groups(1e-3)
    assert [g["lr"] for g in groups] == [pytest.approx(0.1)]
    assert [g["lr"] for g in create_loss("ce+ms", 16, 4).param_groups(1e-3)] == [1e-3]   # the CE head
    assert create_loss("ms", 16, 4).param_groups(1e-3) == []
