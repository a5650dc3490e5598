"""Losses by name. A loss is an nn.Module called as loss(embeddings, labels) -> scalar tensor; it owns
its trainable parameters (the cross-entropy head) and names the heads to store in the artifact.

Registered: "ce" (a Linear head on the raw embedding + cross-entropy; the head is dropped from the
embedding model and stored beside it as "ce_head"); the pair losses of pytorch-metric-learning over a
class-balanced batch, "ms" (MultiSimilarityLoss with its MultiSimilarityMiner), "triplet"
(TripletMarginLoss on the triplets a TripletMarginMiner picks), "contrastive" (ContrastiveLoss), "circle"
(CircleLoss) and "supcon" (SupConLoss); the proxy losses, "nsoftmax" (NormalizedSoftmaxLoss: cosine to a
learned proxy per class), "proxy_anchor" (ProxyAnchorLoss, its proxies learning 100 times faster) and
"arcface" (ArcFaceLoss: an additive angular margin to the class proxies); "pddm" (training/_pddm.py).
Names joined by "+" are their weighted sum ("ce+ms", the default; "ce+supcon"), each part weighted by the
option `<part>_weight` (1 unless set) and given every other option its factory takes.
Add one with @register_loss("name") on a factory taking (embed_dim, num_classes, **options).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

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
    """Names of the registered losses (any of them joined by "+" is a loss too)."""
    return sorted(_LOSSES)


def check_loss_name(name: str) -> list[str]:
    """The parts of the loss `name` (itself when registered, else the registered names joined by "+");
    ValueError naming the first unknown or repeated part."""
    if name in _LOSSES:
        return [name]
    parts = name.split("+")
    for i, part in enumerate(parts):
        if part not in _LOSSES:
            what = f"unknown loss {part!r}" + (f" in {name!r}" if len(parts) > 1 else "")
            raise ValueError(f"{what}; known: {', '.join(list_losses())}, or several joined by +")
        if part in parts[:i]:
            raise ValueError(f"loss {name!r} names {part!r} twice")
    return parts


def is_builtin_loss(name: str) -> bool:
    """Whether every part of the loss `name` is registered by `training` itself (not a user's factory)."""
    return all(_LOSSES[part].__module__.startswith(__name__.rpartition(".")[0] + ".") for part in check_loss_name(name))


def check_loss_options(name: str, options: dict[str, Any]) -> None:
    """ValueError naming an option in `options` that no part of the built-in loss `name` takes (a misspelt
    "margn" would otherwise be ignored). A name with a part registered outside `training` (a user's own loss)
    is not checked: its factory may read any option."""
    parts = check_loss_name(name)
    if not isinstance(options, dict):
        raise ValueError(f"loss_kwargs must be a JSON object (option: value, ...), got {options!r}")
    taken: dict[str, type] = {}   # option -> the type its default has
    for part in parts:
        factory = _LOSSES[part]
        if not factory.__module__.startswith(__name__.rpartition(".")[0] + "."):
            return
        taken.update({n: type(p.default) for n, p in inspect.signature(factory).parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("embed_dim", "num_classes")})
        if len(parts) > 1:
            taken[f"{part}_weight"] = float
    for key, value in options.items():
        # the trainer passes label_smoothing to every loss: 0 means nothing, more is for a loss that takes it
        if key not in taken and not (key == "label_smoothing" and not options[key]):
            raise ValueError(f"loss option {key!r} is not one that loss {name!r} takes; it takes "
                             f"{', '.join(sorted(taken))}")
        _check_option_value(key, value, taken.get(key, float))
    pos, neg = options.get("pos_margin", 0.0), options.get("neg_margin", 1.0)
    if "contrastive" in parts and ("pos_margin" in options or "neg_margin" in options) and not pos < neg:
        raise ValueError(f"loss option pos_margin ({pos!r}) must be below neg_margin ({neg!r}): positive pairs are "
                         "pulled within the one, negative ones pushed beyond the other")


# Options of the built-in losses that only a positive number makes sense for (a temperature or a scale divides
# or multiplies the similarities; a negative one turns the loss around).
POSITIVE_OPTIONS = ("temperature", "scale", "gamma", "alpha", "beta", "proxy_lr_scale")
# Margins and the like, (least, most, what the value is): below the least a loss is satisfied by anything or turned
# around (a negative triplet margin: every triplet already "within" it, nothing learnt), above the most it asks for
# what no unit vectors can give (cosines lie in [-1, 1], Euclidean distances between unit vectors in [0, 2])
_OPTION_RANGES = {
    "margin": (0.0, None, "a margin"),            # triplet (distance), proxy_anchor (cosine), arcface (degrees)
    "epsilon": (0.0, 2.0, "the miner's margin on cosine similarity"),
    "base": (-1.0, 1.0, "a cosine similarity"),
    "pos_margin": (0.0, 2.0, "a distance between unit vectors"),
    "neg_margin": (0.0, 2.0, "a distance between unit vectors"),
    "m": (0.0, 1.0, "the circle loss's relaxation"),
}


def _check_option_value(key: str, value: Any, kind: type) -> None:
    """ValueError naming the option when `value` is not of the type of its default (`kind`), or not positive
    for an option in POSITIVE_OPTIONS."""
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"loss option {key} must be a number, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"loss option {key} must be an integer, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"loss option {key} must be true or false, got {value!r}")
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"loss option {key} must be a string, got {value!r}")
    if key in POSITIVE_OPTIONS and not value > 0:
        raise ValueError(f"loss option {key} must be positive, got {value!r}")
    if key in _OPTION_RANGES and kind is float:
        least, most, what = _OPTION_RANGES[key]
        if value < least or (most is not None and value > most):
            bounds = f"in [{least:g}, {most:g}]" if most is not None else f"at least {least:g}"
            raise ValueError(f"loss option {key} ({what}) must be {bounds}, got {value!r}")
    if key.endswith("_weight") and kind is float and not value >= 0:   # a part of a sum: create_loss's own check
        raise ValueError(f"loss option {key} must be a number of at least 0, got {float(value)}")
    if key == "triplets" and value not in _TRIPLETS:   # _triplet's own check, before any data is read
        raise ValueError(f"loss option triplets must be one of {', '.join(_TRIPLETS)}, got {value!r}")


def create_loss(name: str, embed_dim: int, num_classes: int, **options) -> MetricLoss:
    """Build the loss `name` for embeddings of `embed_dim` and `num_classes` classes; for names joined by
    "+", their weighted sum, the option `<part>_weight` weighting each part (1 by default). An option no
    part takes is refused (ValueError)."""
    check_loss_options(name, options)
    parts = check_loss_name(name)
    if len(parts) == 1:
        return _made(name, embed_dim, num_classes, options)
    weights = {part: float(options.pop(f"{part}_weight", 1.0)) for part in parts}
    for part, w in weights.items():
        if not w >= 0:
            raise ValueError(f"loss option {part}_weight must be a number of at least 0, got {w}")
    return Combined({part: _made(part, embed_dim, num_classes, options) for part in parts}, weights)


def _made(part: str, embed_dim: int, num_classes: int, options: dict[str, Any]) -> MetricLoss:
    """The registered factory `part` called with `options` (the trainer's label_smoothing of 0 left out for a
    factory that does not take it); TypeError naming the factory when it returns no MetricLoss."""
    factory = _LOSSES[part]
    params = inspect.signature(factory).parameters.values()
    if not options.get("label_smoothing", 0) and \
            not any(p.kind is p.VAR_KEYWORD or p.name == "label_smoothing" for p in params):
        options = {k: v for k, v in options.items() if k != "label_smoothing"}
    loss = factory(embed_dim=embed_dim, num_classes=num_classes, **options)
    if not isinstance(loss, MetricLoss):
        raise TypeError(f"loss {part!r}: its factory {factory.__module__}.{factory.__qualname__} returned "
                        f"{type(loss).__name__}, not a training.MetricLoss; wrap a pytorch-metric-learning loss "
                        "(and miner) as training.PairLoss(loss, miner)")
    return loss


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


class PairLoss(MetricLoss):
    """A pytorch-metric-learning loss over the pairs (or triplets) of a class-balanced batch (`self.loss`),
    on those `self.miner` picks when there is one, else on all of them; called on float32 embeddings."""

    needs_pairs = True
    loss: nn.Module
    miner: nn.Module | None

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        mined = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, mined)


class MultiSimilarity(PairLoss):
    """pytorch-metric-learning MultiSimilarityLoss(alpha, beta, base) on pairs mined by
    MultiSimilarityMiner(epsilon); cosine similarity (the embeddings are L2-normalised inside)."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 mine: bool = True, **_):
        from pytorch_metric_learning import losses, miners

        super().__init__(losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base),
                         miners.MultiSimilarityMiner(epsilon=epsilon) if mine else None)


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

    def __init__(self, embed_dim: int, num_classes: int, temperature: float):
        super().__init__()
        from pytorch_metric_learning import losses

        self.loss = losses.NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embed_dim,
                                                 temperature=temperature)


class ProxyAnchor(_ProxyLoss):
    """pytorch-metric-learning ProxyAnchorLoss (Kim et al., 2020): each class proxy is an anchor pulling its
    class's embeddings in and pushing the others away, cosine similarity, `margin` and `alpha` as in the
    paper. As there, the proxies learn `proxy_lr_scale` (100) times faster than the network; they are
    dropped after training."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float, alpha: float, proxy_lr_scale: float):
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

    def __init__(self, embed_dim: int, num_classes: int, margin: float, scale: float):
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


# The factories state the options' defaults, once: check_loss_options reads their types from the signatures, and
# the proxy losses' classes take every value from them. MultiSimilarity keeps defaults of its own, the same ones,
# because PDDMLoss() builds one with them.
@register_loss("ce")
def _ce(embed_dim: int, num_classes: int, label_smoothing: float = 0.0, **_) -> MetricLoss:
    return CrossEntropyLoss(embed_dim, num_classes, label_smoothing)


@register_loss("ms")
def _ms(embed_dim: int, num_classes: int, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
        epsilon: float = 0.1, **_) -> MetricLoss:
    return MultiSimilarity(alpha, beta, base, epsilon)


@register_loss("nsoftmax")
def _nsoftmax(embed_dim: int, num_classes: int, temperature: float = 0.05, **_) -> MetricLoss:
    return NormalizedSoftmax(embed_dim, num_classes, temperature)


@register_loss("proxy_anchor")
def _proxy_anchor(embed_dim: int, num_classes: int, margin: float = 0.1, alpha: float = 32.0,
                  proxy_lr_scale: float = 100.0, **_) -> MetricLoss:
    return ProxyAnchor(embed_dim, num_classes, margin, alpha, proxy_lr_scale)


@register_loss("arcface")
def _arcface(embed_dim: int, num_classes: int, margin: float = 28.6, scale: float = 64.0, **_) -> MetricLoss:
    return ArcFace(embed_dim, num_classes, margin, scale)


_TRIPLETS = ("all", "hard", "semihard", "easy")


@register_loss("triplet")
def _triplet(embed_dim: int, num_classes: int, margin: float = 0.2, triplets: str = "all", **_) -> MetricLoss:
    """pml's TripletMarginLoss(margin) on the triplets TripletMarginMiner(margin, triplets) picks: "all" (every
    triplet within the margin), "semihard" (the negative farther than the positive, but within the margin;
    FaceNet's choice, which trained far worse here: bench_losses.py), "hard" or "easy". Distances are
    Euclidean between the L2-normalised embeddings, which rank as cosine does."""
    from pytorch_metric_learning import losses, miners

    if triplets not in _TRIPLETS:
        raise ValueError(f"loss option triplets must be one of {', '.join(_TRIPLETS)}, got {triplets!r}")
    return PairLoss(losses.TripletMarginLoss(margin=margin),
                    miners.TripletMarginMiner(margin=margin, type_of_triplets=triplets))


@register_loss("contrastive")
def _contrastive(embed_dim: int, num_classes: int, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 **_) -> MetricLoss:
    """pml's ContrastiveLoss: positive pairs pulled within `pos_margin`, negative ones pushed beyond
    `neg_margin` (Euclidean between the L2-normalised embeddings: 1.0 is a cosine of 0.5)."""
    from pytorch_metric_learning import losses

    return PairLoss(losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin))


@register_loss("circle")
def _circle(embed_dim: int, num_classes: int, m: float = 0.4, gamma: float = 80.0, **_) -> MetricLoss:
    """pml's CircleLoss (Sun et al., 2020) on cosine similarity: relaxation `m`, scale `gamma`."""
    from pytorch_metric_learning import losses

    return PairLoss(losses.CircleLoss(m=m, gamma=gamma))


@register_loss("supcon")
def _supcon(embed_dim: int, num_classes: int, temperature: float = 0.1, **_) -> MetricLoss:
    """pml's SupConLoss (Khosla et al., 2020): each image's cosine to its class's others, against all the
    batch's, softmaxed at `temperature`."""
    from pytorch_metric_learning import losses

    return PairLoss(losses.SupConLoss(temperature=temperature))
