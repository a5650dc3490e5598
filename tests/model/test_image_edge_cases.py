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


def _photos(shared_data, n: int = 6) -> list[bytes]:
    import io
    import tarfile

    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                im = Image.open(tar.extractfile(member)).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                out.append(buf.getvalue())
                if len(out) == n:
                    return out
    return out


@pytest.mark.parametrize("source", ["bytes", "file"])
def test_the_same_undecoded_images_embed_from_several_threads_at_once(embedder, shared_data, tmp_path, source):
    """Embedder is thread-safe for the caller's images too: each JPEG not decoded yet is decoded (at the draft
    scale) from a copy of its bytes, not from a second opening that reads the caller's own file object while
    other threads seek it ("image file is truncated", or wrong pixels)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    photos = _photos(shared_data)
    if source == "file":
        for i, data in enumerate(photos):
            (tmp_path / f"{i}.jpg").write_bytes(data)
        images = [Image.open(tmp_path / f"{i}.jpg") for i in range(len(photos))]
    else:
        images = [Image.open(io.BytesIO(data)) for data in photos]
    expected = embedder.embed([Image.open(io.BytesIO(data)) for data in photos])
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: embedder.embed(images), range(48)))
        for got in results:
            assert (got == expected).all()
        assert all(im.tile for im in images)   # the caller's images are still not decoded
    finally:
        for im in images:
            im.close()
