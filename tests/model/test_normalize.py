"""model.PixelNormalize: the one place pixels become the network's input, (x / 255 - mean) / std."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import model

from ..conftest import cifar_model_arrays


@pytest.fixture(scope="module")
def pixels(shared_data) -> torch.Tensor:
    """Twelve real CIFAR-10 test images as uint8 (12, 3, 32, 32)."""
    return torch.from_numpy(cifar_model_arrays(shared_data, "test", 12))


MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def test_uint8_pixels_become_x_over_255_less_the_mean_over_the_std(pixels):
    want = (pixels.double() / 255 - torch.tensor(MEAN).double().view(1, 3, 1, 1)) / torch.tensor(STD).double().view(
        1, 3, 1, 1)
    got = model.PixelNormalize(MEAN, STD)(pixels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_float_pixels_in_the_unit_range_give_what_their_uint8_pixels_give(pixels):
    normalize = model.PixelNormalize(MEAN, STD)
    torch.testing.assert_close(normalize(pixels.float() / 255), normalize(pixels), rtol=0, atol=1e-5)


def test_the_callers_tensor_is_left_as_it_was(pixels):
    views = pixels.float() / 255
    before = views.clone()
    model.PixelNormalize(MEAN, STD)(views)
    torch.testing.assert_close(views, before, rtol=0, atol=0)


def test_other_integer_pixels_and_other_channel_counts_are_refused_naming_them(pixels):
    normalize = model.PixelNormalize(MEAN, STD)
    with pytest.raises(ValueError, match="torch.int64"):
        normalize(pixels.long())
    with pytest.raises(ValueError, match=r"\(12, 1, 32, 32\).*\(N, 3, H, W\)"):
        normalize(pixels[:, :1])
    with pytest.raises(ValueError, match=r"mean \[0.5\] and std \[0.5, 0.5\]"):
        model.PixelNormalize([0.5], [0.5, 0.5])


def test_the_embedder_feeds_its_network_through_it(pixels):
    embedder = model.Embedder.from_file(model.default_artifact_path(), device="cpu", trace=False)
    meta = embedder.meta
    with torch.inference_mode():
        raw = model.embed_tensor(embedder.model, model.PixelNormalize(meta.mean, meta.std)(pixels), meta.tta)
    want = torch.nn.functional.normalize(raw, dim=1).numpy()
    np.testing.assert_array_equal(embedder.embed_arrays(pixels.numpy()), want)
