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
    `norm` adds BatchNorm after every convolution and `residual` wraps each convolution after the
    first by a same-width residual block; both are off in the paper's models.
    """

    def __init__(self, in_chans: int = 3, involutions: int = 1, widths: Sequence[int] = (16, 64, 128),
                 stride: int = 2, act: str = "gelu", embed_dim: int = 256, kernel_size: int = 3,
                 reduction: int | None = None, norm: bool = False, residual: bool = False,
                 strides: Sequence[int] | None = None):
        super().__init__()
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
        for i, (width, s) in enumerate(zip(widths, strides)):
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
        self.embed = nn.Linear(chans, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.pool(self.features(x)).flatten(1))


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
