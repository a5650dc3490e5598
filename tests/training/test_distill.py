"""Distillation from a teacher: what the similarity loss measures and how the teacher embeds."""
from __future__ import annotations

import pytest
import torch

from training._distill import AugmentedViewTeachers, LogitDistillation, SimilarityDistillation, teacher_embeddings


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
    emb, _, ids = teacher_embeddings([str(hybrid1_artifact)], images, 3, 32, cpu)
    art = model.load_artifact(hybrid1_artifact)
    assert ids == [art.model_id] and emb.shape == (10, art.meta.embed_dim)
    own = torch.nn.functional.normalize(embed_images(art.model, images, art.meta.mean, art.meta.std), dim=1)
    assert torch.allclose(emb, own, atol=1e-6)

    torch.manual_seed(5)  # a second, different teacher with a 64-d embedding
    other_net = model.create_model("hybrid1", in_chans=3, embed_dim=64)
    other = model.save_artifact(tmp_path / "other.safetensors", other_net, model.ArtifactMeta(
        name="other", arch="hybrid1", in_chans=3, image_size=32, embed_dim=64, class_names=["a", "b"]))
    both, _, ids = teacher_embeddings([str(hybrid1_artifact), str(other)], images, 3, 32, cpu)
    assert both.shape == (10, art.meta.embed_dim + 64) and len(ids) == 2
    o = model.load_artifact(other)
    theirs = torch.nn.functional.normalize(embed_images(o.model, images, o.meta.mean, o.meta.std), dim=1)
    assert torch.allclose(both @ both.T, (own @ own.T + theirs @ theirs.T) / 2, atol=1e-5)

    with pytest.raises(ValueError, match=r"3x32x32 images, this run trains on 1x28x28"):
        teacher_embeddings([str(hybrid1_artifact)], images[:, :1, :28, :28], 1, 28, cpu)
    with pytest.raises(ValueError, match="teacher: .*no such model artifact"):
        teacher_embeddings([str(hybrid1_artifact) + ".missing"], images, 3, 32, cpu)


def test_teachers_of_augmented_views_embed_each_batch_as_given_without_their_test_time_augmentation(tmp_path):
    import model
    from training._evaluate import embed_images, head_logits

    torch.manual_seed(3)
    net = model.create_model("hybrid1", in_chans=3, embed_dim=32)
    head = torch.nn.Linear(32, 4)
    names = ["a", "b", "c", "d"]
    meta = dict(arch="hybrid1", in_chans=3, image_size=32, embed_dim=32, class_names=names, mean=[0.4, 0.5, 0.6],
                std=[0.2, 0.25, 0.3], heads={"ce_head": {"type": "linear", "in_features": 32, "out_features": 4}})
    plain = model.save_artifact(tmp_path / "plain.safetensors", net, model.ArtifactMeta(name="plain", **meta),
                                heads={"ce_head": head})
    mirrored = model.save_artifact(tmp_path / "mirrored.safetensors", net,
                                   model.ArtifactMeta(name="mirrored", tta="hflip", **meta), heads={"ce_head": head})
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    clean = teacher_embeddings([str(plain)], images, 3, 32, cpu, class_names=names)
    views = AugmentedViewTeachers([str(plain)], 3, 32, cpu, class_names=names)(images.float() / 255)
    assert torch.allclose(views.embeddings, clean.embeddings, atol=1e-5)  # the same images: the same answer
    assert torch.allclose(views.logits, clean.logits, atol=1e-4) and views.ids == clean.ids
    # The stored mirror-image averaging is not applied to the views: the plain network's output, normalised.
    art = model.load_artifact(mirrored)
    out = AugmentedViewTeachers([str(mirrored)], 3, 32, cpu)(images.float() / 255)
    raw = embed_images(art.model, images, art.meta.mean, art.meta.std)  # tta none
    assert out.logits is None
    assert torch.allclose(out.embeddings, torch.nn.functional.normalize(raw, dim=1), atol=1e-5)
    assert not torch.allclose(out.embeddings, teacher_embeddings([str(mirrored)], images, 3, 32, cpu).embeddings,
                              atol=1e-3)
    assert torch.allclose(head_logits(raw, art.heads["ce_head"]),
                          AugmentedViewTeachers([str(mirrored)], 3, 32, cpu, names)(images.float() / 255).logits,
                          atol=1e-4)
    with pytest.raises(ValueError, match="soft labels need the same classes"):
        AugmentedViewTeachers([str(plain)], 3, 32, cpu, class_names=["a", "b", "c", "e"])


def test_soft_labels_cost_nothing_when_the_student_agrees_up_to_a_shift_and_teach_the_teachers_ranking():
    teacher = _embeddings(n=32, dim=10) * 3
    loss = LogitDistillation(4.0)
    assert loss(teacher + 7.0, teacher).item() == pytest.approx(0.0, abs=1e-5)  # softmax ignores a shift
    student = _embeddings(n=32, dim=10, seed=4).requires_grad_(True)
    first = loss(student, teacher).item()
    assert first > 0.1
    opt = torch.optim.Adam([student], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss(student, teacher).backward()
        opt.step()
    assert loss(student, teacher).item() < 0.05 * first
    # the student now ranks the classes as the teacher does, not only its top class
    assert (student.detach().argsort(dim=1) == teacher.argsort(dim=1)).float().mean().item() > 0.9


def test_the_temperature_is_squared_back_so_soft_labels_keep_the_hard_losss_gradient_scale():
    teacher, student = _embeddings(n=64, dim=10) * 2, _embeddings(n=64, dim=10, seed=6) * 2

    def grad_norm(t):
        s = student.clone().requires_grad_(True)
        LogitDistillation(t)(s, teacher).backward()
        return s.grad.norm().item()

    # without the T^2 factor the gradient would shrink about 1/T^2 = 64x from T=1 to T=8
    assert 0.2 < grad_norm(8.0) / grad_norm(1.0) < 5


def _with_ce_head(tmp_path, name, seed, class_names):
    import model

    torch.manual_seed(seed)
    net = model.create_model("hybrid1", in_chans=3)
    head = torch.nn.Linear(net.embed_dim, len(class_names))
    meta = model.ArtifactMeta(name=name, arch="hybrid1", in_chans=3, image_size=32, class_names=class_names,
                              heads={"ce_head": {"type": "linear", "in_features": net.embed_dim,
                                                 "out_features": len(class_names)}})
    return model.save_artifact(tmp_path / f"{name}.safetensors", net, meta, heads={"ce_head": head}), net, head


def test_teachers_soft_labels_are_their_stored_heads_logits_averaged_and_need_a_head_for_the_same_classes(
        hybrid1_artifact, tmp_path):
    from training._evaluate import embed_images

    classes = [f"c{i}" for i in range(10)]
    a, net_a, head_a = _with_ce_head(tmp_path, "a", 1, classes)
    b, net_b, head_b = _with_ce_head(tmp_path, "b", 2, classes)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    assert teacher_embeddings([str(a)], images, 3, 32, cpu).logits is None  # not asked for
    taught = teacher_embeddings([str(a), str(b)], images, 3, 32, cpu, class_names=classes)
    with torch.no_grad():
        own_a = head_a(embed_images(net_a, images, [0.5] * 3, [0.5] * 3))
        own_b = head_b(embed_images(net_b, images, [0.5] * 3, [0.5] * 3))
    assert taught.logits.shape == (12, 10) and len(taught.ids) == 2
    assert torch.allclose(taught.logits, (own_a + own_b) / 2, atol=1e-4)

    with pytest.raises(ValueError, match="soft labels need a model trained with a cross-entropy head"):
        teacher_embeddings([str(hybrid1_artifact)], images, 3, 32, cpu, class_names=classes)
    with pytest.raises(ValueError, match=r"same classes in the same order; it knows \['c0'.*this run trains on \['c1'"):
        teacher_embeddings([str(a)], images, 3, 32, cpu, class_names=classes[1:] + classes[:1])
