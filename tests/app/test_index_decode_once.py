"""POST /index decodes an image once where one decoding gives its vector and its thumbnail (a PNG, WebP, GIF or BMP;
a JPEG whose draft for the model and for the thumbnail come out at the same scale and mode: CIFAR's 32x32, a
phone's 12 MP at 1/8), as `simsearch index build` does (tests/cli/test_build_decode_once.py), and what it stores
is still what decoding for each gives: the vector model.Embedder gives the file, the thumbnail the service made
before from a decoding of its own; a file that does not decode is refused as before."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import model

from ..photo_formats import cifar_pictures, counted_decodes, decode_once_files, untrained_hybrid1
from .conftest import running, settings_for
from .test_api import assert_error, upload

pytestmark = pytest.mark.anyio

THUMB = 128   # the service's default thumbnail size
CROP = (0.25, 0.25, 0.75, 0.75)


@pytest.fixture(scope="module")
def images(shared_data) -> dict[str, bytes]:
    """The files of photo_formats.decode_once_files, by id."""
    return decode_once_files(cifar_pictures(shared_data))


@pytest.fixture(scope="module")
def grey_artifact(tmp_path_factory):
    """A Hybrid-1 greyscale artifact: its draft for the model is in mode L, the thumbnail's in RGB."""
    return untrained_hybrid1(tmp_path_factory.mktemp("grey"), 1)


def _thumbnail_of_before(data: bytes, crop=None) -> bytes:
    """The thumbnail as POST /index made it before: a JPEG, MPO or HEIC from a decoding of its own at the
    thumbnail's draft scale, anything else from its whole decoding."""
    from app._images import decode_image

    return model.make_thumbnail(decode_image(data, 10**9, draft=model.draft_size(THUMB, crop)), THUMB, crop)


def _embedders_vector(embedder, data: bytes, crop=None) -> np.ndarray:
    """What model.Embedder gives the file (its region `crop`), freshly opened."""
    if crop is None:
        return embedder.embed([Image.open(io.BytesIO(data))])[0]
    return embedder.embed_arrays(embedder.preprocess(Image.open(io.BytesIO(data)), crop)[None].copy())[0]


@pytest.mark.parametrize("grey", [False, True], ids=["rgb-model", "grey-model"])
@pytest.mark.parametrize("crop", [None, CROP], ids=["whole", "crop"])
async def test_post_index_stores_the_vector_and_thumbnail_each_decoding_on_its_own_gives(
        images, hybrid1_artifact, grey_artifact, tmp_path, grey, crop):
    artifact = grey_artifact if grey else hybrid1_artifact
    embedder = model.Embedder.from_file(artifact, device="cpu")
    query = "" if crop is None else "?crop=" + ",".join(map(str, crop))
    async with running(settings_for(artifact, tmp_path / "data")) as c:
        for name, data in images.items():   # one at a time: a 12 MP JPEG is near the body limit
            r = await c.post(f"/index{query}", files=[upload(data, name, "application/octet-stream")],
                             data={"id": name, "metadata": '{"where": "home"}'})
            assert r.status_code == 201, (name, r.text)
        store = c.app.state.service.store
        for name, data in images.items():
            item = store.get(name)
            # the vector of the model's own draft (float rounding apart: another scale is off by 1e-3 and more)
            assert np.abs(item.vector - _embedders_vector(embedder, data, crop)).max() < 1e-6, name
            assert item.metadata == {"where": "home"}, name
            thumb = await c.get(f"/index/{name}/thumbnail")
            assert thumb.status_code == 200 and thumb.content == _thumbnail_of_before(data, crop), name
        # a picture turned by EXIF is stored upright
        if crop is None:
            assert Image.open(io.BytesIO(store.thumbnail("jpeg/large_turned.jpg"))).size == (96, 128)
        # a file that does not decode is refused as before, naming it
        for name in ("jpeg/photo.jpg", "jpeg/large.jpg"):
            cut = images[name][:len(images[name]) // 2]
            assert_error(await c.post(f"/index{query}", files=[upload(cut, "cut.jpg", "image/jpeg")]), 400,
                         "invalid_image", "file 0 ('cut.jpg'): the image data is corrupt or truncated: image file "
                                          "is truncated")


@pytest.mark.parametrize("thumbnail_size", [THUMB, 0], ids=["thumbnails", "no-thumbnails"])
async def test_post_index_decodes_a_png_a_cifar_jpeg_or_a_12mp_jpeg_once_and_a_640x480_jpeg_at_two_scales(
        images, hybrid1_artifact, tmp_path, monkeypatch, thumbnail_size):
    names = ("cifar/cat.jpg", "cifar/ship.jpg", "jpeg/photo.jpg", "jpeg/large.jpg", "jpeg/small_turned.jpg",
             "whole/photo.png", "whole/photo.webp", "whole/photo.gif")
    async with running(settings_for(hybrid1_artifact, tmp_path / "data", thumbnail_size=thumbnail_size)) as c:
        decoded = counted_decodes(monkeypatch)   # the service started
        for name in names:
            r = await c.post("/index", files=[upload(images[name], name, "application/octet-stream")])
            assert r.status_code == 201, (name, r.text)
    counts = dict(sorted(decoded.items()))
    # CIFAR's 32x32 JPEGs and the 60x45 one: once, both drafts being the whole picture; the 12 MP one once, both
    # drafts at 1/8; a PNG, WebP or GIF once; a 640x480 JPEG at 80x60 for the model and, with thumbnails, at
    # 320x240 for them
    expected = {("JPEG", (32, 32)): 2, ("JPEG", (60, 45)): 1, ("JPEG", (504, 378)): 1, ("JPEG", (80, 60)): 1,
                ("PNG", (640, 480)): 1, ("WEBP", (640, 480)): 1, ("GIF", (640, 480)): 1}
    if thumbnail_size:
        expected["JPEG", (320, 240)] = 1
    assert counts == dict(sorted(expected.items()))
    assert sum(counts.values()) == len(names) + (1 if thumbnail_size else 0)
