"""Images whose decoding would cost far more than their bytes say (session 53, helper H's hunt): model.open_image,
which the service and `simsearch index build` both open uploads and files with, refuses a JPEG of more scans than
any encoder writes before Pillow reads it; bytes FF DA inside an ICC profile or an EXIF thumbnail are not scans."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

import model
from model._crop import draft_size
from model._preprocess import MAX_JPEG_SCANS, jpeg_segments

from ..photo_formats import many_scan_jpeg


def jpeg(img: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **options)
    return out.getvalue()


def test_open_image_refuses_a_jpeg_of_thousands_of_scans_before_decoding_it():
    bomb = many_scan_jpeg(4000, 4000, 20_000)   # 180 KB; some 25 s to decode
    started = time.perf_counter()
    with pytest.raises(Image.DecompressionBombError, match=f"more than {MAX_JPEG_SCANS} scans"):
        model.open_image(bomb)
    assert time.perf_counter() - started < 1
    with pytest.raises(Image.DecompressionBombError):
        model.open_image(bomb, formats=["JPEG", "PNG"])
    assert jpeg_segments(bomb, 10**9) == (4, 20_001)


def test_jpegs_as_encoders_write_them_open_and_decode():
    img = Image.effect_mandelbrot((300, 200), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    for options, scans in (({}, 1), ({"progressive": True}, 10), ({"progressive": True, "optimize": True}, 10)):
        data = jpeg(img, quality=85, **options)
        assert jpeg_segments(data, 10**9)[1] == scans
        with model.open_image(data) as im:
            im.load()
    with model.open_image(jpeg(img.convert("CMYK"), progressive=True)) as im:   # 18 scans
        im.load()
    with model.open_image(many_scan_jpeg(64, 48, MAX_JPEG_SCANS - 1)) as im:   # at the limit, with its DC scan
        im.load()


def test_bytes_ff_da_outside_the_scans_are_not_counted():
    # an ICC profile and an EXIF thumbnail both holding FF DA hundreds of times, and an MPO's second picture
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    icc = b"\xff\xda" * 5000
    data = jpeg(img, icc_profile=icc, progressive=True)
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS and jpeg_segments(data, 10**9)[1] == 10
    with model.open_image(data) as im:
        im.load()
    out = io.BytesIO()
    img.save(out, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48))] * 150)
    assert jpeg_segments(out.getvalue(), 10**9)[1] == 1   # the first picture's: what is decoded
    with model.open_image(out.getvalue()) as im:
        im.load()


def test_a_region_narrower_than_any_float_asks_for_a_full_size_decode():
    for crop in ((0, 0, 5e-324, 1), (0, 0, 1, 5e-324), (0.5, 0.5, 0.5 + 1e-16, 1)):
        assert draft_size(32, crop) >= 2**31
        arr = model.to_model_array(Image.new("RGB", (640, 480), (1, 2, 3)), 3, 32, crop)
        assert arr.shape == (3, 32, 32)
    assert draft_size(32, (0, 0, 0.5, 1)) == 64 and draft_size(32, None) == 32


_PEAK = """
import numpy as np
from PIL import Image
import model
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4000, 4000, 4), dtype=np.uint8), "RGBA")
rgba.load()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")   # the peak resident size starts again from the present one
before = status("VmRSS")
{work}
print((status("VmHWM") - before) // 1024)
"""


def _peak_mb(work: str) -> int:
    """The peak memory `work` adds, in MB, in a fresh interpreter, over a decoded 4000 x 4000 RGBA image (64 MB)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK.format(work=work)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux's peak memory reset")
def test_a_thumbnail_of_a_large_transparent_image_is_flattened_after_it_is_shrunk():
    # flattened onto white at full size first, and the image copied for an EXIF orientation it did not have, it
    # took some 4 times the image's 64 MB more (a 64 MP RGBA PNG: 733 MB, s53 H F4); now one premultiplied copy
    assert _peak_mb("model.make_thumbnail(rgba, 128)") < 110
    assert _peak_mb("model.to_model_array(rgba, 3, 32)") < 110


def test_a_thumbnail_of_a_transparent_image_is_the_picture_it_was():
    rng = np.random.default_rng(1)
    colour = Image.effect_mandelbrot((600, 400), (-2, -1.2, 1, 1.2), 80)
    img = Image.merge("RGBA", [colour, colour.rotate(20), colour, Image.linear_gradient("L").resize((600, 400))])
    img.putpixel((10, 10), tuple(int(v) for v in rng.integers(0, 256, 4)))
    flattened = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    want = np.asarray(Image.open(io.BytesIO(model.make_thumbnail(flattened, 128))), np.int16)
    got = np.asarray(Image.open(io.BytesIO(model.make_thumbnail(img, 128))), np.int16)
    assert got.shape == want.shape == (85, 128, 3)
    assert np.abs(got - want).mean() < 2
