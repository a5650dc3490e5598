"""The model's input normalisation, written once: pixels -> (x / 255 - mean) / std."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class PixelNormalize(nn.Module):
    """Pixels (N, C, H, W) as a network of the zoo takes them: (x / 255 - mean) / std per channel, with the
    artifact's `mean` and `std` (ArtifactMeta.mean, .std: fractions of the full scale, one per channel).

    uint8 input holds pixels 0..255, as model.to_model_array makes them; floating-point input holds pixels
    already scaled to [0, 1] (augmented training views), and is normalised as (x - mean) / std. Both are
    computed as one multiply and one add on a float32 copy (x * scale + shift), never in the caller's
    memory: the Embedder, the exported ONNX graph, evaluation and the teachers of distillation all feed
    their networks through here, so that training, evaluation and serving see the same numbers.

    A module so that its two constants move with `.to(device)` and become part of an exported graph.
    Raises ValueError when `mean` and `std` differ in length or a std is not positive, and when called
    with images of another number of channels or another dtype (integers other than uint8)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean {mean} and std {std} must give one value per channel each")
        if not all(s > 0 for s in std):
            raise ValueError(f"std {std}: every value must be positive")
        c = len(mean)
        m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.register_buffer("byte_scale", 1.0 / (255.0 * s))   # for uint8 pixels
        self.register_buffer("unit_scale", 1.0 / s)             # for pixels in [0, 1]
        self.register_buffer("shift", -m / s)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.shift.shape[1]:
            raise ValueError(f"images of shape {tuple(images.shape)}: expected (N, {self.shift.shape[1]}, H, W)")
        if images.dtype == torch.uint8:
            scale = self.byte_scale
        elif images.is_floating_point():
            scale = self.unit_scale
        else:
            raise ValueError(f"images of dtype {images.dtype}: give uint8 pixels 0..255 or floats in [0, 1]")
        return images.to(torch.float32, copy=True).mul_(scale).add_(self.shift)
