"""Involution (Li et al., CVPR 2021): a kernel generated per pixel, shared across channel groups."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Involution(nn.Module):
    """Involution layer.

    The kernel for each output pixel is made from that pixel by conv1x1 -> BatchNorm -> ReLU ->
    conv1x1 to kernel_size**2 * groups values, then applied to the kernel_size x kernel_size
    neighbourhood of every channel in its group. Output channels equal input channels.
    """

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 reduction: int = 1):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.channels, self.kernel_size, self.stride, self.groups = channels, kernel_size, stride, groups
        reduced = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.bn = nn.BatchNorm2d(reduced)
        self.span = nn.Conv2d(reduced, kernel_size * kernel_size * groups, 1)
        # Pooling makes the kernel at output resolution when the layer strides.
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, g, s = self.kernel_size, self.groups, self.stride
        kernel = self.span(F.relu(self.bn(self.reduce(self.pool(x)))))
        ho, wo = kernel.shape[-2:]
        kernel = kernel.view(b, g, 1, k * k, ho, wo)
        patches = F.unfold(x, k, padding=(k - 1) // 2, stride=s).view(b, g, c // g, k * k, ho, wo)
        return (kernel * patches).sum(dim=3).view(b, c, ho, wo)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}")
