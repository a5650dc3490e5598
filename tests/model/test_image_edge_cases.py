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


def test_messages_name_the_kind_of_a_wrong_argument_with_one_article(embedder, tmp_path):
    """They said "got one a PIL.JpegImageFile" and "got a a numpy.ndarray of shape ..."."""
    import numpy as np

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as im:
        with pytest.raises(TypeError) as one:
            embedder.embed(im)
    with pytest.raises(TypeError) as array:
        embedder.embed(np.zeros((2, 3, 32, 32), np.uint8))
    for err in (one, array):
        text = str(err.value)
        assert " a a " not in text and " one a " not in text, text
    assert "got one alone (a PIL.JpegImageFile): embed([image])" in str(one.value)
    assert "got a numpy.ndarray of shape (2, 3, 32, 32); uint8 pixel arrays" in str(array.value)


def test_a_bool_array_is_told_how_to_make_pixels_of_a_mask_not_of_floats(embedder):
    import numpy as np

    with pytest.raises(ValueError) as err:
        embedder.embed_arrays(np.ones((1, 3, 32, 32), bool))
    assert "dtype bool" in str(err.value) and "floats" not in str(err.value)
    assert "array.astype(np.uint8) * 255" in str(err.value)
    with pytest.raises(ValueError, match=r"dtype float32.*floats in \[0, 1\]"):
        embedder.embed_arrays(np.ones((1, 3, 32, 32), np.float32))


def test_an_image_used_after_its_with_block_closed_is_named_as_closed(embedder, tmp_path):
    """Pillow failed with a bare AssertionError as it came to decode it."""
    Image.new("RGB", (50, 40), (1, 2, 3)).save(tmp_path / "a.jpg")
    Image.new("RGB", (50, 40), (1, 2, 3)).save(tmp_path / "a.png")
    for name in ("a.jpg", "a.png"):
        with Image.open(tmp_path / name) as im:
            pass
        for call in (lambda: embedder.embed([im]), lambda: model.to_model_array(im, 3, 32),
                     lambda: model.make_thumbnail(im, 64)):
            with pytest.raises(ValueError, match=r"was closed before it was decoded .*with Image.open"):
                call()
        with Image.open(tmp_path / name) as im:
            im.load()   # its pixels kept: usable after the block
        assert (embedder.embed([im]) == embedder.embed([tmp_path / name])).all()


def test_an_unknown_model_name_is_a_key_error_and_a_value_error_with_a_plain_message_naming_the_nearest():
    with pytest.raises(KeyError) as err:
        model.create_model("hybrid_1")
    assert isinstance(err.value, ValueError)
    text = str(err.value)
    assert text.startswith("unknown model 'hybrid_1' (nearest: hybrid1"), text   # not in a KeyError's quotes
    assert "known: " in text and "cnn3a" in text
    with pytest.raises(ValueError, match="unknown model 'zzzz'; known: "):
        model.create_model("zzzz")


def test_high_depth_grey_is_scaled_by_its_types_full_range_as_stored_galleries_were_made():
    """Not the range the image uses: 12-bit data in I;16 or I comes out dark (at most 16 of 255). Pinned on
    purpose: another scaling would change the vectors of every stored gallery of such images."""
    import numpy as np

    from model._preprocess import _high_depth_to_l

    cases = [(Image.fromarray(np.array([[0, 4095]], np.uint16)), [0, 16]),
             (Image.fromarray(np.array([[0, 4095, 70000]], np.int32), "I"), [0, 16, 255]),
             (Image.fromarray(np.array([[0, 200]], np.int32), "I"), [0, 200]),
             (Image.fromarray(np.array([[0, 0.5, 1.0]], np.float32), "F"), [0, 128, 255]),
             (Image.fromarray(np.array([[0, 2.0, 300.0]], np.float32), "F"), [0, 2, 255])]
    for image, expected in cases:
        assert np.asarray(_high_depth_to_l(image)).tolist() == [expected], image.mode


def _old_high_depth_to_l(image: Image.Image):
    """_high_depth_to_l as it was before it worked in bands: the pixels stored galleries were made from."""
    import numpy as np

    arr = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        peak = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        peak = 65535.0
    else:
        peak = 255.0
    return np.clip(np.nan_to_num(arr) / peak * 255.0, 0, 255).round().astype(np.uint8)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NaN and inf values, as both versions meet them
@pytest.mark.parametrize("band", [1, 7, 1 << 18])
def test_high_depth_grey_converted_in_bands_gives_the_very_same_pixels(monkeypatch, band):
    import numpy as np

    import model._preprocess as pre

    monkeypatch.setattr(pre, "_HIGH_DEPTH_BAND", band)
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 50), (50, 1), (37, 23), (300, 200)]:
        floats = rng.normal(0.5, 0.6, shape).astype(np.float32)
        floats.flat[:3] = [np.nan, np.inf, -np.inf][:floats.size]
        images = [Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16)),
                  Image.fromarray(rng.integers(0, 4096, shape, dtype=np.uint16)),
                  Image.fromarray(rng.integers(-100, 100_000, shape, dtype=np.int32), "I"),
                  Image.fromarray(rng.integers(0, 256, shape, dtype=np.int32), "I"),
                  Image.fromarray(floats, "F"), Image.fromarray(floats * 300, "F"),
                  Image.fromarray(np.clip(floats, 0, 1), "F")]
        for image in images:
            assert np.array_equal(np.asarray(pre._high_depth_to_l(image)), _old_high_depth_to_l(image)), image.mode


def test_a_16_bit_grey_image_is_converted_in_little_memory():
    """A 16 MP 16-bit PNG took some 370 MB more (float64 copies of the whole image), a 64 MP one 1.6 GB."""
    import subprocess
    import sys
    from pathlib import Path

    child = """if True:
        import numpy as np
        from PIL import Image
        from model._preprocess import _high_depth_to_l
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))   # kB
        image = Image.fromarray(np.random.default_rng(0).integers(0, 65536, (4000, 4000), dtype=np.uint16))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        _high_depth_to_l(image)
        print(status("VmHWM") - before)
    """
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", child], cwd=repo, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    growth_mb = int(run.stdout.split()[-1]) / 1024
    # the image's values as an array (32 MB) and the 8-bit result (16 MB), plus a band
    assert growth_mb < 120, f"peak resident memory grew {growth_mb:.0f} MB"
