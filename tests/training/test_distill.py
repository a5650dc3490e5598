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


def test_teachers_embed_as_their_artifacts_do_an_ensemble_averages_their_cosines_and_other_images_are_refused(
        hybrid1_artifact, tmp_path):
    import model
    from training._evaluate import embed_images

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    emb, ids = teacher_embeddings([str(hybrid1_artifact)], images, 3, 32, cpu)
    art = model.load_artifact(hybrid1_artifact)
    assert ids == [art.model_id] and emb.shape == (10, art.meta.embed_dim)
    own = torch.nn.functional.normalize(embed_images(art.model, images, art.meta.mean, art.meta.std), dim=1)
    assert torch.allclose(emb, own, atol=1e-6)

    torch.manual_seed(5)  # a second, different teacher with a 64-d embedding
    other_net = model.create_model("hybrid1", in_chans=3, embed_dim=64)
    other = model.save_artifact(tmp_path / "other.safetensors", other_net, model.ArtifactMeta(
        name="other", arch="hybrid1", in_chans=3, image_size=32, embed_dim=64, class_names=["a", "b"]))
    both, ids = teacher_embeddings([str(hybrid1_artifact), str(other)], images, 3, 32, cpu)
    assert both.shape == (10, art.meta.embed_dim + 64) and len(ids) == 2
    o = model.load_artifact(other)
    theirs = torch.nn.functional.normalize(embed_images(o.model, images, o.meta.mean, o.meta.std), dim=1)
    assert torch.allclose(both @ both.T, (own @ own.T + theirs @ theirs.T) / 2, atol=1e-5)

    with pytest.raises(ValueError, match=r"3x32x32 images, this run trains on 1x28x28"):
        teacher_embeddings([str(hybrid1_artifact)], images[:, :1, :28, :28], 1, 28, cpu)
    with pytest.raises(ValueError, match="teacher: .*no such model artifact"):
        teacher_embeddings([str(hybrid1_artifact) + ".missing"], images, 3, 32, cpu)
