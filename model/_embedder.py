"""Embedder: PIL images in, L2-normalised float32 vectors out."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._artifact import TTA_MODES, Artifact, ArtifactMeta, load_artifact
from ._preprocess import to_model_array


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embed_tensor(net: torch.nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Raw (not normalised) embeddings of a normalised float batch (N, C, S, S) under test-time augmentation
    `tta`: "none" is net(x); "hflip" is the mean of net(x) and net(x mirrored left-right), one forward pass
    of 2N images (the mean, not the sum, so that a linear head on it sees the mean of its two logits).

    hflip suits models trained with horizontal flips (photos, clothing), where it adds 0.5-3.5 points of
    precision@1 (docs/results/training.md); on digits it loses. Every embedding the service, the indexer and
    the evaluation compute goes through here, so gallery and queries always agree.
    """
    if tta == "none":
        return net(x)
    if tta == "hflip":
        y = net(torch.cat([x, x.flip(3)]))
        return (y[:len(x)] + y[len(x):]) * 0.5
    raise ValueError(f"unknown test-time augmentation {tta!r}; known: {', '.join(TTA_MODES)}")


class Embedder:
    """Embeds images with a loaded model artifact, in batches, deterministically."""

    def __init__(self, artifact: Artifact, device: str | torch.device | None = None, batch_size: int = 256):
        self.artifact = artifact
        self.meta: ArtifactMeta = artifact.meta
        self.device = torch.device(device) if device else default_device()
        self.batch_size = batch_size
        self.model = artifact.model.to(self.device).eval()
        c = self.meta.in_chans
        self._mean = torch.tensor(self.meta.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(self.meta.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        # (x / 255 - mean) / std as x * scale + shift, in place on the float copy: no further
        # allocations (fresh multi-MB tensors cost page faults) and equal to within float rounding;
        # see docs/results/benchmarks.md.
        self._scale = 1.0 / (255.0 * self._std)
        self._shift = -self._mean / self._std

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                  batch_size: int = 256) -> "Embedder":
        """Load an artifact file (raises model.ArtifactError when it is not usable)."""
        dev = torch.device(device) if device else default_device()
        return cls(load_artifact(path, device=dev), dev, batch_size)

    @property
    def dim(self) -> int:
        return self.meta.embed_dim

    @property
    def model_id(self) -> str:
        return self.artifact.model_id

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image -> uint8 (C, S, S) array as the model sees it (decode-side work, thread-safe)."""
        return to_model_array(image, self.meta.in_chans, self.meta.image_size)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images of any size and mode: float32 (N, dim), each row of unit length."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_arrays(np.stack([self.preprocess(im) for im in images]))

    @torch.inference_mode()
    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed preprocessed uint8 arrays of shape (N, C, S, S)."""
        out = []
        for start in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[start:start + self.batch_size])).to(self.device)
            x = x.to(torch.float32, copy=True).mul_(self._scale).add_(self._shift)  # never the caller's memory
            out.append(F.normalize(embed_tensor(self.model, x, self.meta.tta).float(), dim=1).cpu())
        return (out[0] if len(out) == 1 else torch.cat(out)).numpy().astype(np.float32, copy=False)
