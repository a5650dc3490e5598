"""Centring: a share of the training images' mean embedding taken off every embedding, folded into the weights.

Why: all embeddings of a model share a common part (on CIFAR-10 two images of different classes sit at a
cosine of about 0.5), which cosine similarity weighs as much as what tells the images apart. Taking off
part of the mean makes the differences count for more: on the shipped CIFAR-10 models +0.008 to +0.02 of
precision@1 at half the mean, and nothing on MNIST and Fashion-MNIST (docs/results/training.md, seventeenth
session); half, not all, because the mean also carries some of what separates the classes.

The shift is subtracted from the embedding layer's bias, so the artifact keeps its architecture and parameter
count, and the service, the indexer and the evaluation need to know nothing of it. The cross-entropy head is
given the opposite shift in its bias, so its logits, and the CE figures, do not change.
"""
from __future__ import annotations

import torch
from torch import nn

from ._evaluate import embed_images, retrieval_metrics

# the shares of the mean tried when the share is chosen on a validation split
CENTRE_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)


def can_centre(net: nn.Module, heads=()) -> bool:
    """Whether a shift can be folded into `net`: it ends in an embedding layer with a bias (`net.embed`, a Linear:
    the hybrid/cnn/inn family and the baselines), and of the `heads` (names) beside it none but the CE head,
    whose bias can follow the shift (the PDDM head reads the embeddings as they are)."""
    embed = getattr(net, "embed", None)
    return isinstance(embed, nn.Linear) and embed.bias is not None and set(heads) <= {"ce_head"}


def mean_embedding(net: nn.Module, images: torch.Tensor, mean, std, device: torch.device | str = "cpu",
                   tta: str = "none", limit: int = 10_000, seed: int = 0) -> torch.Tensor:
    """The mean raw embedding of `images` (uint8, N x C x S x S) under `tta`, over a seeded sample of at most
    `limit` of them."""
    if len(images) > limit:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]]
    return embed_images(net, images, mean, std, device, tta=tta).mean(0)


@torch.no_grad()
def fold_shift(net: nn.Module, shift: torch.Tensor, ce_head: dict[str, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor] | None:
    """Make `net` output its old embedding minus `shift` (in place, in its embedding layer's bias). Returns the
    CE head's state with its bias moved to match (logits unchanged), or None when there is no head."""
    if not can_centre(net):
        raise ValueError(f"cannot fold a shift into {type(net).__name__}: it has no Linear embedding layer "
                         "`embed` with a bias")
    net.embed.bias.sub_(shift.to(net.embed.bias))
    if ce_head is None:
        return None
    weight, bias = ce_head["weight"], ce_head["bias"]
    return {**ce_head, "bias": bias + weight.float() @ shift.to(weight.device).float()}


def choose_centre(embeddings: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                  choices=CENTRE_CHOICES) -> tuple[float, dict[str, float]]:
    """The share of `mean` whose removal gives the best precision@1 on these (validation) embeddings, the
    smallest on a tie, and each share's precision@1."""
    scores = {str(a): retrieval_metrics(embeddings - a * mean, labels, only_p1=True)["precision_at_1"]
              for a in choices}
    best = max(choices, key=lambda a: (scores[str(a)], -a))
    return best, scores
