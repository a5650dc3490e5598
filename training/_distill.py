"""Distillation from a teacher artifact: the student learns, beside its own loss, the teacher's similarity
structure over each batch and, optionally, its classifier's soft labels.

For every image of a batch, the teacher's cosine similarities to the other images of the batch, divided by a
temperature and soft-maxed, are a distribution over those images; the student is pulled towards the same
distribution by KL divergence (relational distillation: only similarities are compared, so the two
embeddings may differ in size and basis).

Where the teachers look (`TrainConfig.distill_views`):
- "clean" (the default): the teachers embed the training images once, before the first epoch, without
  augmentation (with their own test-time augmentation). One forward pass of each teacher per image for the
  whole run instead of one per image and epoch, which is what lets a slow teacher (the stride-1 residual model
  costs 16x the faithful model) teach on a CPU; but the student's cropped, mirrored, erased view is then
  pulled towards the teacher's view of the whole image.
- "augmented": the teachers embed every batch as the student sees it, augmentation included ("consistent"
  teaching, Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent"). Each step
  costs one more forward pass per teacher; the views are embedded without the teachers' test-time
  augmentation, since the batch already holds mirror images and it would double that cost.

Soft labels (Hinton et al., 2015) need a teacher trained with a cross-entropy head (stored in its artifact as
"ce_head") for the same classes, and a student loss with such a head ("ce", "ce+ms").
"""
from __future__ import annotations

from typing import NamedTuple

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


class LogitDistillation(nn.Module):
    """Knowledge distillation from soft labels: KL(teacher || student) between the class distributions of the
    two classifiers' logits, both divided by `temperature`, times temperature squared (which keeps the
    gradients' scale that of the hard-label loss as the temperature changes). forward(student (N, K),
    teacher (N, K))."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        with torch.no_grad():
            target = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(F.log_softmax(student.float() / t, dim=1), target, log_target=True,
                        reduction="batchmean") * t * t


class Teaching(NamedTuple):
    """What the teachers say about the training images: `embeddings` (N, D), `logits` (N, K) or None when
    soft labels were not asked for, and the teachers' model ids."""

    embeddings: torch.Tensor
    logits: torch.Tensor | None
    ids: list[str]


def _load_teachers(paths: list[str], in_chans: int, image_size: int, class_names: list[str] | None):
    """The teacher artifacts at `paths`, checked against the run's images and (for soft labels) classes."""
    import model as zoo

    arts = []
    for path in paths:
        try:
            art = zoo.load_artifact(path)
        except zoo.ArtifactError as exc:
            raise ValueError(f"teacher: {exc}") from None
        meta = art.meta
        if (meta.in_chans, meta.image_size) != (in_chans, image_size):
            raise ValueError(f"teacher {path}: it embeds {meta.in_chans}x{meta.image_size}x{meta.image_size} "
                             f"images, this run trains on {in_chans}x{image_size}x{image_size}")
        if class_names is not None:
            if art.heads.get("ce_head") is None:
                raise ValueError(f"teacher {path}: soft labels need a model trained with a cross-entropy head "
                                 f"(loss ce or ce+ms); it was trained with "
                                 f"{(meta.training or {}).get('config', {}).get('loss', 'another loss')!r}")
            if list(meta.class_names) != list(class_names):
                raise ValueError(f"teacher {path}: soft labels need the same classes in the same order; it "
                                 f"knows {list(meta.class_names)}, this run trains on {list(class_names)}")
        arts.append(art)
    return arts


def teacher_embeddings(paths: list[str], images: torch.Tensor, in_chans: int, image_size: int,
                       device: torch.device, class_names: list[str] | None = None) -> Teaching:
    """The teacher artifacts at `paths` embed `images` (uint8 (N, C, S, S)) as the service would (each with
    its own normalisation and test-time augmentation). Several teachers are an ensemble: their L2-normalised
    embeddings are concatenated and scaled by 1/sqrt(k), so that the cosine similarity of two images is the
    mean of the k teachers'. With `class_names` (the run's classes, in label order), each teacher's stored
    cross-entropy head also classifies the images and the ensemble's logits are the mean of theirs.
    Raises ValueError when an artifact cannot be read, was made for other images or, for soft labels, has no
    cross-entropy head or other classes."""
    from ._evaluate import embed_images, head_logits

    arts = _load_teachers(paths, in_chans, image_size, class_names)
    parts, logits = [], []
    for art in arts:
        meta = art.meta
        emb = embed_images(art.model.to(device), images, list(meta.mean), list(meta.std), device, tta=meta.tta)
        parts.append(F.normalize(emb, dim=1))
        if class_names is not None:
            logits.append(head_logits(emb, art.heads["ce_head"]))
    return Teaching(ensemble_of(parts), torch.stack(logits).mean(0) if logits else None,
                    [a.model_id for a in arts])


class AugmentedViewTeachers:
    """The teachers kept in memory to embed each augmented batch as the student sees it ("consistent"
    teaching). Called with a batch of images in [0, 1] (N, C, S, S), already augmented, it returns a
    Teaching of that batch: the ensemble's embeddings (as teacher_embeddings) and, with `class_names`, its
    mean logits. Same checks and errors as teacher_embeddings."""

    def __init__(self, paths: list[str], in_chans: int, image_size: int, device: torch.device,
                 class_names: list[str] | None = None):
        import model as zoo

        arts = _load_teachers(paths, in_chans, image_size, class_names)
        self.ids = [a.model_id for a in arts]
        self._teachers = []
        for art in arts:
            net = art.model.to(device).eval()  # __call__ runs under no_grad: no gradient reaches it
            normalize = zoo.PixelNormalize(art.meta.mean, art.meta.std).to(device)
            head = art.heads.get("ce_head") if class_names is not None else None
            self._teachers.append((net, normalize, head))

    @torch.no_grad()
    def __call__(self, views: torch.Tensor) -> Teaching:
        from ._evaluate import head_logits

        parts, logits = [], []
        for net, normalize, head in self._teachers:
            emb = net(normalize(views)).float()   # views: floats in [0, 1]
            parts.append(F.normalize(emb, dim=1))
            if head is not None:
                logits.append(head_logits(emb, head))
        return Teaching(ensemble_of(parts), torch.stack(logits).mean(0) if logits else None, self.ids)


def ensemble_of(parts: list[torch.Tensor]) -> torch.Tensor:
    """One embedding for k models' L2-normalised embeddings (each (N, D_i)): concatenated and scaled by
    1/sqrt(k), so that the cosine similarity of two images is the mean of the k models'."""
    return torch.cat(parts, dim=1) / len(parts) ** 0.5
