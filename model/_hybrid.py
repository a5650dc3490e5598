"""The paper's family: involution layers in front of a compact CNN (Hybrid-n, CNN-3a/3b, INN-n).

Shapes are pinned by the paper's parameter counts (see docs/model-zoo.md): Hybrid-1 is
Involution(k3, g1) -> GELU -> Conv3x3(16) -> GELU -> Conv3x3(64) -> GELU -> Conv3x3(128) -> GELU
-> global average pool -> Linear(128 -> 256).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._involution import Involution
from ._registry import register_model

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class InvConvNet(nn.Module):
    """`involutions` involution layers, then 3x3 convolutions of `widths`, pooled to an embedding.

    With no convolutions (the INN models) the pooled input channels feed the embedding layer.
    `stride` applies to every convolution unless `strides` gives one per convolution.
    `norm` adds BatchNorm after every convolution, `head_norm` BatchNorm on the pooled features before
    the embedding layer, and `residual` wraps each convolution after the first by a same-width residual
    block; all three are off in the paper's models. `fused()` folds both BatchNorms away.
    """

    def __init__(self, in_chans: int = 3, involutions: int = 1, widths: Sequence[int] = (16, 64, 128),
                 stride: int = 2, act: str = "gelu", embed_dim: int = 256, kernel_size: int = 3,
                 reduction: int | None = None, norm: bool = False, residual: bool = False,
                 strides: Sequence[int] | None = None, head_norm: bool = False):
        super().__init__()
        self.config = dict(in_chans=in_chans, involutions=involutions, widths=tuple(widths), stride=stride,
                           act=act, embed_dim=embed_dim, kernel_size=kernel_size, reduction=reduction,
                           norm=norm, residual=residual, strides=strides, head_norm=head_norm)
        act_layer = _activation(act)
        self.in_chans, self.embed_dim = in_chans, embed_dim
        # The paper's counts fit a reduction of 2 for RGB and 1 for grey input.
        reduction = reduction if reduction is not None else (2 if in_chans > 1 else 1)
        layers: list[nn.Module] = []
        for _ in range(involutions):
            layers += [Involution(in_chans, kernel_size, reduction=reduction), act_layer()]
        strides = tuple(strides) if strides is not None else (stride,) * len(widths)
        if len(strides) != len(widths):
            raise ValueError(f"strides {strides} must give one stride per convolution {tuple(widths)}")
        chans = in_chans
        for i, (width, s) in enumerate(zip(widths, strides, strict=True)):
            block: list[nn.Module] = [nn.Conv2d(chans, width, 3, stride=s, padding=1, bias=not norm)]
            if norm:
                block.append(nn.BatchNorm2d(width))
            block.append(act_layer())
            if residual and i > 0:
                block.append(_Residual(width, norm, act_layer))
            layers += block
            chans = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_norm = nn.BatchNorm1d(chans) if head_norm else nn.Identity()
        self.embed = nn.Linear(chans, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.head_norm(self.pool(self.features(x)).flatten(1)))

    @torch.no_grad()
    def fused(self) -> "InvConvNet":
        """The same function without the optional BatchNorms: each one folded into the layer before it
        (convolutions) or after it (the embedding layer), using its running statistics.

        The result is built with norm=False and head_norm=False, so a model trained with them becomes the
        plain architecture, with its parameter count, for inference (eval-mode outputs agree to float
        rounding). The involution's own BatchNorm is part of the architecture and stays.
        """
        out = InvConvNet(**{**self.config, "norm": False, "head_norm": False}).to(self.embed.weight.device)
        pairs, targets = _conv_norm_pairs(self.features), _conv_norm_pairs(out.features)
        if len(pairs) != len(targets):  # cannot happen for models this class builds
            raise RuntimeError(f"{len(pairs)} convolutions to fold into {len(targets)}")
        for (conv, bn), (target, _) in zip(pairs, targets, strict=True):
            weight, bias = conv.weight, conv.bias if conv.bias is not None else torch.zeros_like(target.bias)
            if bn is not None:
                scale, shift = _scale_shift(bn)
                weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale + shift
            target.weight.copy_(weight)
            target.bias.copy_(bias)
        for src, dst in zip(_involutions(self.features), _involutions(out.features), strict=True):
            dst.load_state_dict(src.state_dict())
        weight, bias = self.embed.weight, self.embed.bias
        if isinstance(self.head_norm, nn.BatchNorm1d):
            scale, shift = _scale_shift(self.head_norm)
            weight, bias = weight * scale.view(1, -1), bias + weight @ shift
        out.embed.weight.copy_(weight)
        out.embed.bias.copy_(bias)
        return out.train(self.training)


    @torch.no_grad()
    def load_plain(self, plain: "InvConvNet") -> None:
        """Load `plain`, this architecture without the optional BatchNorms (as `fused()` makes it, and as the
        shipped models are), into this one, the inverse of `fused()`: every weight is copied, and each
        BatchNorm starts as the identity in eval mode (scale 1, running mean 0, running variance 1 - eps),
        taking over the bias of the convolution before it, so the two compute the same in eval mode until
        training moves them. (A convolution that has neither a bias nor a BatchNorm here, the second of a
        residual branch, loses the plain one's bias: `fused()` models have none there.) ValueError when
        `plain` is not this architecture without them."""
        plain_free = {k: v for k, v in plain.config.items() if k not in ("norm", "head_norm")}
        ours_free = {k: v for k, v in self.config.items() if k not in ("norm", "head_norm")}
        if plain_free != ours_free or plain.config["norm"] or plain.config["head_norm"]:
            raise ValueError(f"a model built with {plain.config} is not this one ({self.config}) without its "
                             "BatchNorms")
        pairs, sources = _conv_norm_pairs(self.features), _conv_norm_pairs(plain.features)
        for (conv, bn), (source, _) in zip(pairs, sources, strict=True):
            conv.weight.copy_(source.weight)
            if conv.bias is not None:
                conv.bias.copy_(source.bias)
            if bn is not None:
                _identity(bn, source.bias)
        for src, dst in zip(_involutions(plain.features), _involutions(self.features), strict=True):
            dst.load_state_dict(src.state_dict())
        if isinstance(self.head_norm, nn.BatchNorm1d):
            _identity(self.head_norm, torch.zeros_like(self.head_norm.bias))
        self.embed.load_state_dict(plain.embed.state_dict())


def _identity(bn: nn.modules.batchnorm._BatchNorm, bias: torch.Tensor) -> None:
    """`bn` as x + bias in eval mode."""
    bn.weight.fill_(1.0)
    bn.bias.copy_(bias)
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def _scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as x * scale + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _involutions(features: nn.Module) -> list[Involution]:
    return [m for m in features.modules() if isinstance(m, Involution)]


def _conv_norm_pairs(features: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every convolution outside the involutions, in forward order, with the BatchNorm that follows it."""
    inside = {id(m) for inv in _involutions(features) for m in inv.modules()}
    following: dict[int, nn.BatchNorm2d] = {}
    for seq in features.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq)
            following.update({id(a): b for a, b in zip(kids, kids[1:], strict=False)
                              if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)})
    return [(m, following.get(id(m))) for m in features.modules()
            if isinstance(m, nn.Conv2d) and id(m) not in inside]


class _Residual(nn.Module):
    """Adds a 3x3 same-width branch on top of the previous block's output."""

    def __init__(self, width: int, norm: bool, act_layer: type[nn.Module]):
        super().__init__()
        branch: list[nn.Module] = [nn.Conv2d(width, width, 3, padding=1, bias=not norm)]
        if norm:
            branch.append(nn.BatchNorm2d(width))
        self.branch = nn.Sequential(*branch, act_layer(), nn.Conv2d(width, width, 3, padding=1, bias=not norm))
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


@register_model
def hybrid1(**kwargs) -> InvConvNet:
    """Hybrid-1, the paper's model: one involution before CNN 16/64/128 (116,634 counted values on RGB)."""
    return InvConvNet(**{"involutions": 1, **kwargs})


@register_model
def hybrid2(**kwargs) -> InvConvNet:
    """Hybrid-2: two involutions before CNN 16/64/128."""
    return InvConvNet(**{"involutions": 2, **kwargs})


@register_model
def hybrid3(**kwargs) -> InvConvNet:
    """Hybrid-3: three involutions before CNN 16/64/128."""
    return InvConvNet(**{"involutions": 3, **kwargs})


@register_model
def cnn3a(**kwargs) -> InvConvNet:
    """Vanilla CNN-3a: convolutions 16/64/128, no involution."""
    return InvConvNet(**{"involutions": 0, **kwargs})


@register_model
def cnn3b(**kwargs) -> InvConvNet:
    """Vanilla CNN-3b: convolutions 16/96/128, no involution."""
    return InvConvNet(**{"involutions": 0, "widths": (16, 96, 128), **kwargs})


@register_model
def inn2(**kwargs) -> InvConvNet:
    """Vanilla INN-2: two involutions, pooled straight into the embedding layer."""
    return InvConvNet(**{"involutions": 2, "widths": (), **kwargs})


@register_model
def inn3(**kwargs) -> InvConvNet:
    """Vanilla INN-3: three involutions."""
    return InvConvNet(**{"involutions": 3, "widths": (), **kwargs})


@register_model
def inn4(**kwargs) -> InvConvNet:
    """Vanilla INN-4: four involutions."""
    return InvConvNet(**{"involutions": 4, "widths": (), **kwargs})
