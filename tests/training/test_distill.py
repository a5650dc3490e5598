"""Distillation from a teacher: what the similarity loss measures and how the teacher embeds."""
from __future__ import annotations

import pytest
import torch

from training._distill import SimilarityDistillation, teacher_embeddings


def _embeddings(n=24, dim=16, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_a_student_with_the_teachers_similarities_in_another_basis_and_size_has_zero_loss():
    teacher = _embeddings()
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    student = torch.cat([3.0 * teacher @ rotation, torch.zeros(len(teacher), 8)], dim=1)  # 24-d, scaled, rotated
    loss = SimilarityDistillation(0.1)
    assert loss(student, teacher).item() == pytest.approx(0.0, abs=1e-5)
    shuffled = student[torch.randperm(len(student), generator=torch.Generator().manual_seed(2))]
    assert loss(shuffled, teacher).item() > 0.5


def test_the_gradient_pulls_a_student_towards_the_teachers_neighbours():
    teacher = _embeddings()
    student = _embeddings(seed=3).requires_grad_(True)
    loss = SimilarityDistillation(0.1)
    opt = torch.optim.SGD([student], lr=0.5)
    first = loss(student, teacher).item()
    for _ in range(100):
        opt.zero_grad()
        loss(student, teacher).backward()
        opt.step()
    assert loss(student, teacher).item() < 0.2 * first
    # each row's nearest neighbour is now the teacher's
    def nearest(e):
        e = torch.nn.functional.normalize(e.detach(), dim=1)
        return (e @ e.T).fill_diagonal_(-2).argmax(dim=1)
    assert (nearest(student) == nearest(teacher)).float().mean().item() > 0.9


def test_the_teacher_embeds_as_the_artifact_does_and_refuses_other_images(hybrid1_artifact):
    import model
    from training._evaluate import embed_images

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    emb, model_id = teacher_embeddings(str(hybrid1_artifact), images, 3, 32, torch.device("cpu"))
    art = model.load_artifact(hybrid1_artifact)
    assert model_id == art.model_id and emb.shape == (10, art.meta.embed_dim)
    assert torch.allclose(emb, embed_images(art.model, images, art.meta.mean, art.meta.std))
    with pytest.raises(ValueError, match=r"3x32x32 images, this run trains on 1x28x28"):
        teacher_embeddings(str(hybrid1_artifact), images[:, :1, :28, :28], 1, 28, torch.device("cpu"))
    with pytest.raises(ValueError, match="teacher: .*no such model artifact"):
        teacher_embeddings(str(hybrid1_artifact) + ".missing", images, 3, 32, torch.device("cpu"))
