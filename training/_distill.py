"""Distillation from a teacher artifact: the student learns, beside its own loss, the teacher's similarity
structure over each batch.

For every image of a batch, the teacher's cosine similarities to the other images of the batch, divided by a
temperature and soft-maxed, are a distribution over those images; the student is pulled towards the same
distribution by KL divergence (relational distillation: only similarities are compared, so the two
embeddings may differ in size and basis). The teacher's embeddings of the training images are computed once,
before the first epoch, from the images without augmentation (with the teacher's own test-time augmentation):
one forward pass of the teacher per image for the whole run instead of one per image and epoch, which is what
lets a slow teacher (the stride-1 residual model costs 16x the faithful model) teach on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimilarityDistillation(nn.Module):
    """KL(teacher || student) between the rows of the two in-batch cosine-similarity matrices, each row
    without its diagonal, divided by `temperature`, soft-maxed. forward(student (N, Ds), teacher (N, Dt))."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n = student.shape[0]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)

        def log_rows(e: torch.Tensor) -> torch.Tensor:
            e = F.normalize(e.float(), dim=1)
            sim = (e @ e.T)[off_diagonal].view(n, n - 1)
            return F.log_softmax(sim / self.temperature, dim=1)

        with torch.no_grad():
            target = log_rows(teacher)
        return F.kl_div(log_rows(student), target, log_target=True, reduction="batchmean")


def teacher_embeddings(paths: list[str], images: torch.Tensor, in_chans: int, image_size: int,
                       device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """The teacher artifacts at `paths` embed `images` (uint8 (N, C, S, S)) as the service would (each with
    its own normalisation and test-time augmentation). Returns (embeddings (N, D) on the CPU, the teachers'
    model ids). Several teachers are an ensemble: their L2-normalised embeddings are concatenated and scaled
    by 1/sqrt(k), so that the cosine similarity of two images is the mean of the k teachers'.
    Raises ValueError when an artifact cannot be read or was made for other images."""
    import model as zoo

    from ._evaluate import embed_images

    parts, ids = [], []
    for path in paths:
        try:
            art = zoo.load_artifact(path)
        except zoo.ArtifactError as exc:
            raise ValueError(f"teacher: {exc}") from None
        meta = art.meta
        if (meta.in_chans, meta.image_size) != (in_chans, image_size):
            raise ValueError(f"teacher {path}: it embeds {meta.in_chans}x{meta.image_size}x{meta.image_size} "
                             f"images, this run trains on {in_chans}x{image_size}x{image_size}")
        emb = embed_images(art.model.to(device), images, list(meta.mean), list(meta.std), device, tta=meta.tta)
        parts.append(F.normalize(emb, dim=1))
        ids.append(art.model_id)
    return ensemble_of(parts), ids


def ensemble_of(parts: list[torch.Tensor]) -> torch.Tensor:
    """One embedding for k models' L2-normalised embeddings (each (N, D_i)): concatenated and scaled by
    1/sqrt(k), so that the cosine similarity of two images is the mean of the k models'."""
    return torch.cat(parts, dim=1) / len(parts) ** 0.5
