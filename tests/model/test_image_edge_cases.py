"""What the Python API says of images it cannot use: an image with no pixels, one used after its file was closed,
pixel arrays of the wrong kind, and unknown model names; and that the same undecoded image may be embedded from
several threads at once."""
from __future__ import annotations

import pytest
from PIL import Image

import model


@pytest.fixture(scope="module")
def embedder() -> model.Embedder:
    return model.Embedder.from_file(model.default_artifact_path(), device="cpu")


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_image_with_no_pixels_is_a_value_error_naming_its_size(embedder, size):
    """A 0x0 image gave ZeroDivisionError from inside the resize."""
    w, h = size
    for call in (lambda im: embedder.embed([im]), lambda im: model.to_model_array(im, 3, 32),
                 lambda im: model.make_thumbnail(im, 128)):
        with pytest.raises(ValueError, match=rf"the image has no pixels \({w}x{h}\)"):
            call(Image.new("RGB", size))
