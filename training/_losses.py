"""Losses by name. A loss is an nn.Module called as loss(embeddings, labels) -> scalar tensor; it owns
its trainable parameters (the cross-entropy head) and names the heads to store in the artifact.

Registered: "ce" (a Linear head on the raw embedding + cross-entropy; the head is dropped from the
embedding model and stored beside it as "ce_head"), "ms" (pytorch-metric-learning's
MultiSimilarityLoss on cosine similarity with its MultiSimilarityMiner), "ce+ms" (their weighted sum),
"nsoftmax" (pml's NormalizedSoftmaxLoss: cosine to a learned proxy per class), "nsoftmax+ms",
"proxy_anchor" (pml's ProxyAnchorLoss, its proxies learning 100 times faster) and "arcface" (pml's
ArcFaceLoss: an additive angular margin to the class proxies).
Add one with @register_loss("name") on a factory taking (embed_dim, num_classes, **options).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_LOSSES: dict[str, Callable[..., "MetricLoss"]] = {}


class MetricLoss(nn.Module):
    """Base class: forward(embeddings (N, D), labels (N,)) -> scalar loss."""

    #: True when batches should be class-balanced (M per class) for this loss
    needs_pairs: bool = False

    def heads(self) -> dict[str, nn.Module]:
        """Trainable modules to store in the artifact beside the model, by name."""
        return {}

    def head_meta(self) -> dict[str, dict]:
        """Build arguments of each head (recorded in ArtifactMeta.heads)."""
        return {}

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer's parameter groups for this loss's own parameters (heads, proxies) at the
        model's learning rate `lr`: one group at `lr` unless a loss says otherwise."""
        params = list(self.parameters())
        return [{"params": params, "lr": lr}] if params else []


def register_loss(name: str):
    """Decorator registering a loss factory under `name`."""
    def deco(fn):
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = fn
        return fn
    return deco


def list_losses() -> list[str]:
    """Names of the registered losses."""
    return sorted(_LOSSES)


def create_loss(name: str, embed_dim: int, num_classes: int, **options) -> MetricLoss:
    """Build the loss `name` for embeddings of `embed_dim` and `num_classes` classes."""
    try:
        factory = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(list_losses())}") from None
    return factory(embed_dim=embed_dim, num_classes=num_classes, **options)


class CrossEntropyLoss(MetricLoss):
    """Linear(embed_dim -> num_classes) on the raw embedding, then cross-entropy."""

    def __init__(self, embed_dim: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.head = nn.Linear(embed_dim, num_classes)
        self.label_smoothing = label_smoothing
        self.embed_dim, self.num_classes = embed_dim, num_classes

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(embeddings.float()), labels,
                                           label_smoothing=self.label_smoothing)

    def heads(self) -> dict[str, nn.Module]:
        return {"ce_head": self.head}

    def head_meta(self) -> dict[str, dict]:
        return {"ce_head": {"type": "linear", "in_features": self.embed_dim, "out_features": self.num_classes}}


class MultiSimilarity(MetricLoss):
    """pytorch-metric-learning MultiSimilarityLoss(alpha, beta, base) on pairs mined by
    MultiSimilarityMiner(epsilon); cosine similarity (the embeddings are L2-normalised inside)."""

    needs_pairs = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 mine: bool = True, **_):
        super().__init__()
        from pytorch_metric_learning import losses, miners

        self.loss = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
        self.miner = miners.MultiSimilarityMiner(epsilon=epsilon) if mine else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)


class _ProxyLoss(MetricLoss):
    """A pytorch-metric-learning loss over learned class proxies (`self.loss`), called on the embeddings
    as float32 and the labels; the proxies are its parameters, dropped after training."""

    loss: nn.Module

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings.float(), labels)


class NormalizedSoftmax(_ProxyLoss):
    """pytorch-metric-learning NormalizedSoftmaxLoss: cross-entropy over the cosine similarities between the
    embedding and one learned proxy per class, divided by `temperature`.

    It trains for the cosine search the service runs; a linear head on the raw embedding ("ce") can classify
    well while nearest neighbours lag behind it. The proxies are dropped after training."""

    def __init__(self, embed_dim: int, num_classes: int, temperature: float = 0.05):
        super().__init__()
        from pytorch_metric_learning import losses

        self.loss = losses.NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embed_dim,
                                                 temperature=temperature)


class ProxyAnchor(_ProxyLoss):
    """pytorch-metric-learning ProxyAnchorLoss (Kim et al., 2020): each class proxy is an anchor pulling its
    class's embeddings in and pushing the others away, cosine similarity, `margin` and `alpha` as in the
    paper. As there, the proxies learn `proxy_lr_scale` (100) times faster than the network; they are
    dropped after training."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.1, alpha: float = 32.0,
                 proxy_lr_scale: float = 100.0):
        super().__init__()
        from pytorch_metric_learning import losses

        self.loss = losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embed_dim,
                                           margin=margin, alpha=alpha)
        self.proxy_lr_scale = proxy_lr_scale

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr * self.proxy_lr_scale}]


class ArcFace(_ProxyLoss):
    """pytorch-metric-learning ArcFaceLoss (Deng et al., 2019): softmax over the cosines to one learned
    weight per class, scaled by `scale`, with an additive angular `margin` (degrees) on the true class.
    The weights are dropped after training."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 28.6, scale: float = 64.0):
        super().__init__()
        from pytorch_metric_learning import losses

        self.loss = losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embed_dim, margin=margin,
                                       scale=scale)


class Combined(MetricLoss):
    """A weighted sum of losses; heads of every part are kept."""

    def __init__(self, parts: dict[str, MetricLoss], weights: dict[str, float]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.weights = dict(weights)
        self.needs_pairs = any(p.needs_pairs for p in parts.values())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * p(embeddings, labels) for k, p in self.parts.items())

    def heads(self) -> dict[str, nn.Module]:
        return {k: v for p in self.parts.values() for k, v in p.heads().items()}

    def head_meta(self) -> dict[str, dict]:
        return {k: v for p in self.parts.values() for k, v in p.head_meta().items()}

    def param_groups(self, lr: float) -> list[dict]:
        return [g for p in self.parts.values() for g in p.param_groups(lr)]


@register_loss("ce")
def _ce(embed_dim: int, num_classes: int, label_smoothing: float = 0.0, **_) -> MetricLoss:
    return CrossEntropyLoss(embed_dim, num_classes, label_smoothing)


@register_loss("ms")
def _ms(embed_dim: int, num_classes: int, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
        epsilon: float = 0.1, **_) -> MetricLoss:
    return MultiSimilarity(alpha, beta, base, epsilon)


@register_loss("ce+ms")
def _ce_ms(embed_dim: int, num_classes: int, ce_weight: float = 1.0, ms_weight: float = 1.0,
           label_smoothing: float = 0.0, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
           epsilon: float = 0.1, **_) -> MetricLoss:
    return Combined({"ce": CrossEntropyLoss(embed_dim, num_classes, label_smoothing),
                     "ms": MultiSimilarity(alpha, beta, base, epsilon)}, {"ce": ce_weight, "ms": ms_weight})


@register_loss("nsoftmax")
def _nsoftmax(embed_dim: int, num_classes: int, temperature: float = 0.05, **_) -> MetricLoss:
    return NormalizedSoftmax(embed_dim, num_classes, temperature)


@register_loss("nsoftmax+ms")
def _nsoftmax_ms(embed_dim: int, num_classes: int, nsoftmax_weight: float = 1.0, ms_weight: float = 1.0,
                 temperature: float = 0.05, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1, **_) -> MetricLoss:
    return Combined({"nsoftmax": NormalizedSoftmax(embed_dim, num_classes, temperature),
                     "ms": MultiSimilarity(alpha, beta, base, epsilon)},
                    {"nsoftmax": nsoftmax_weight, "ms": ms_weight})


@register_loss("proxy_anchor")
def _proxy_anchor(embed_dim: int, num_classes: int, margin: float = 0.1, alpha: float = 32.0,
                  proxy_lr_scale: float = 100.0, **_) -> MetricLoss:
    return ProxyAnchor(embed_dim, num_classes, margin, alpha, proxy_lr_scale)


@register_loss("arcface")
def _arcface(embed_dim: int, num_classes: int, margin: float = 28.6, scale: float = 64.0, **_) -> MetricLoss:
    return ArcFace(embed_dim, num_classes, margin, scale)
