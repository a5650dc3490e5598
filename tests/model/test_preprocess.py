"""model.to_model_array, Embedder.preprocess and Embedder.embed read the caller's image without changing
it, and still decode photos at a reduced scale (the draft) where the image is not decoded yet."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

import model

from ..photo_formats import encode_as, phone_sized


@pytest.fixture(scope="module")
def photo(shared_data) -> Image.Image:
    """A real CIFAR-10 test image, enlarged to 640x480."""
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        member = next(m for m in tar if m.isfile() and m.name.split("/")[1:2] == ["test"])
        return phone_sized(Image.open(tar.extractfile(member)))


@pytest.fixture(scope="module")
def embedder() -> model.Embedder:
    return model.Embedder.from_file(model.default_artifact_path(), device="cpu")


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "HEIC"])
@pytest.mark.parametrize("how", ["embed", "preprocess", "to_model_array"])
@pytest.mark.parametrize("source", ["bytes", "file"])
def test_embedding_leaves_the_callers_image_whole(photo, embedder, fmt, how, source, tmp_path):
    data = encode_as(photo, fmt)
    (tmp_path / "photo").write_bytes(data)
    im = _open(data) if source == "bytes" else Image.open(tmp_path / "photo")
    {"embed": lambda: embedder.embed([im]), "preprocess": lambda: embedder.preprocess(im),
     "to_model_array": lambda: model.to_model_array(im, 3, 32)}[how]()
    assert im.size == (640, 480)
    np.testing.assert_array_equal(_pixels(im), _pixels(_open(data)))   # decodes as a fresh opening does


def test_a_thumbnail_made_after_embedding_is_the_full_sized_one(photo, embedder):
    data = encode_as(photo, "JPEG")
    im = _open(data)
    embedder.embed([im])
    assert _open(model.make_thumbnail(im, 128)).size == (128, 96)


@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "HEIC"])
def test_an_image_not_yet_decoded_is_still_embedded_from_its_reduced_scale_decoding(photo, fmt):
    data = encode_as(photo, fmt)
    drafted = _open(data)
    drafted.draft("RGB", (32, 32))   # what to_model_array did to the caller's image before
    assert drafted.size[0] < 640
    np.testing.assert_array_equal(model.to_model_array(_open(data), 3, 32), model.to_model_array(drafted, 3, 32))


def test_another_picture_of_an_mpo_is_embedded_as_that_picture(photo):
    im = _open(encode_as(photo, "MPO"))
    im.seek(1)   # the second picture: the first upside down
    upside_down = photo.transpose(Image.Transpose.ROTATE_180)
    second = model.to_model_array(im, 3, 32).astype(int)
    assert np.abs(second - model.to_model_array(_open(encode_as(upside_down, "JPEG")), 3, 32)).mean() < 3
    assert np.abs(second - model.to_model_array(_open(encode_as(photo, "JPEG")), 3, 32)).mean() > 10


@pytest.mark.parametrize("fmt", ["JPEG", "MPO", "HEIC"])
def test_an_image_the_caller_owns_is_drafted_in_place_to_the_same_pixels(photo, fmt):
    """owned=True (the service's uploads, files opened by path): no second opening, the caller's image is the
    one drafted, and the model's input is what a caller's image left whole gets."""
    data = encode_as(photo, fmt)
    owned = _open(data)
    got = model.to_model_array(owned, 3, 32, owned=True)
    assert owned.size[0] < 640   # drafted in place (a HEIC from its embedded thumbnail)
    np.testing.assert_array_equal(got, model.to_model_array(_open(data), 3, 32))
