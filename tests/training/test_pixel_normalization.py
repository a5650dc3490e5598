"""Evaluation and distillation's teachers normalise pixels as the Embedder does (model.PixelNormalize), so
that the vectors training measures are the ones the service serves."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from training._distill import AugmentedViewTeachers
from training._evaluate import embed_images

from ..conftest import cifar_model_arrays


@pytest.fixture(scope="module")
def pixels(shared_data) -> torch.Tensor:
    """Sixteen real CIFAR-10 test images as uint8 (16, 3, 32, 32)."""
    return torch.from_numpy(cifar_model_arrays(shared_data, "test", 16))


@pytest.fixture(scope="module")
def embedder() -> model.Embedder:
    return model.Embedder.from_file(model.default_artifact_path(), device="cpu", trace=False)


def test_evaluation_embeds_bit_for_bit_as_the_embedder(pixels, embedder):
    meta = embedder.meta
    raw = embed_images(embedder.model, pixels, meta.mean, meta.std, tta=meta.tta)
    np.testing.assert_array_equal(F.normalize(raw, dim=1).numpy(), embedder.embed_arrays(pixels.numpy()))


def test_a_teacher_embeds_augmented_views_as_the_embedder_embeds_their_pixels(pixels, embedder):
    teachers = AugmentedViewTeachers([str(model.default_artifact_path())], 3, 32, torch.device("cpu"))
    got = teachers(pixels.float() / 255).embeddings.numpy()   # one teacher: its unit vectors, untouched
    # the views are embedded without the teacher's test-time augmentation
    want = embedder.embed_arrays(pixels.numpy()) if embedder.meta.tta == "none" else None
    if want is None:
        with torch.inference_mode():
            want = F.normalize(embedder.model(model.PixelNormalize(embedder.meta.mean, embedder.meta.std)(pixels)),
                               dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
