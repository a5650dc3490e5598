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
        # The 1x1 convolutions as batched matmuls: oneDNN's convolution on 1-3 channels is ~100x slower.
        kernel = _pointwise(self.span, F.relu(self.bn(_pointwise(self.reduce, self.pool(x)))))
        ho, wo = kernel.shape[-2:]
        kernel = kernel.view(b, g, 1, k * k, ho, wo)
        # Sum over the k x k neighbourhood as k*k shifted multiply-adds on the padded input (the same
        # arithmetic as unfold + mul + sum, without the k*k-fold im2col buffer).
        p = (k - 1) // 2
        xp = F.pad(x, (p, p, p, p)).view(b, g, c // g, h + 2 * p, w + 2 * p)
        out = None
        for i in range(k * k):
            dy, dx = divmod(i, k)
            patch = xp[..., dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
            out = kernel[:, :, :, i] * patch if out is None else out.addcmul_(kernel[:, :, :, i], patch)
        return out.reshape(b, c, ho, wo)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}")


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv (a 1x1, stride-1, ungrouped Conv2d) applied to x as one batched matmul."""
    b, c, h, w = x.shape
    weight = conv.weight.view(1, -1, c).expand(b, -1, -1)
    flat = x.reshape(b, c, h * w)
    out = torch.bmm(weight, flat) if conv.bias is None else torch.baddbmm(conv.bias.view(1, -1, 1), weight, flat)
    return out.view(b, -1, h, w)
