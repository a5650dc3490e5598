"""Decoding: the allow-list decided from the bytes, pixel limits, truncation, thumbnails."""
from __future__ import annotations

import io

import anyio
import numpy as np
import pytest
from PIL import Image

from app._errors import ApiError
from app._images import decode_image, image_policy
from model import make_thumbnail

from ..photo_formats import encode_as

SETTING = "SIMSEARCH_MAX_PIXELS, or `simsearch serve --max-pixels`"   # what a 413 of one image's pixels names
from . import crafted
from .conftest import encode, pattern

LIMIT = 40_000_000


@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {})])
def test_allowed_formats_decode_to_loaded_images(fmt, kw):
    img = decode_image(encode(pattern(3), fmt, **kw), LIMIT)
    assert img.format == fmt and img.size == (64, 48)


@pytest.mark.parametrize("name,make,plugin_opens", [
    ("a FITS", crafted.fits, True), ("a PostScript/EPS", crafted.eps, True), ("a PDF", crafted.pdf, False),
    ("a TIFF", crafted.tiff, True), ("an SVG", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", False),
    ("an ICO", lambda: b"\x00\x00\x01\x00" + bytes(60), False)])
def test_formats_outside_the_allow_list_are_415_even_those_pillow_could_open(name, make, plugin_opens):
    data = make()
    if plugin_opens:  # without the allow-list, Pillow would hand these to their decoders
        assert Image.open(io.BytesIO(data)).format in ("EPS", "FITS", "TIFF")
    with pytest.raises(ApiError) as err:
        decode_image(data, LIMIT)
    assert err.value.status == 415 and err.value.code == "unsupported_format"
    assert name in err.value.message


@pytest.mark.parametrize("fmt,pillow_format", [("MPO", "MPO"), ("HEIC", "HEIF"), ("AVIF", "AVIF")])
def test_what_phones_write_decodes_mpo_as_its_first_picture(fmt, pillow_format):
    first = pattern(5, (64, 48))
    img = decode_image(encode_as(first, fmt), LIMIT)
    assert img.format == pillow_format and img.size == (64, 48)
    # the MPO's second picture is the first upside down: the pixels show which one was read
    pixels = np.asarray(img, dtype=int)
    error = np.abs(pixels - np.asarray(first, dtype=int)).mean()
    assert error < 12 and error < np.abs(pixels - np.asarray(first.rotate(180), dtype=int)).mean() / 4


@pytest.mark.parametrize("fmt,name", [("HEIC", "HEIC"), ("AVIF", "AVIF")])
def test_a_cut_phone_photo_is_400_invalid_image_naming_its_format(fmt, name):
    data = encode_as(pattern(5, (200, 160)), fmt)
    with pytest.raises(ApiError) as err:
        decode_image(data[: len(data) // 2], LIMIT)
    assert (err.value.status, err.value.code) == (400, "invalid_image")
    with pytest.raises(ApiError) as err:
        decode_image(data[:40], LIMIT)  # not even a whole header: named from the file type box
    assert (err.value.status, err.value.code) == (400, "invalid_image") and name in err.value.message


def test_a_narrowed_policy_refuses_the_formats_it_leaves_out_as_415_naming_them():
    policy = image_policy(["jpeg", "png"])
    heic = encode_as(pattern(5, (64, 48)), "HEIC")
    for data in (heic, heic[:40]):  # whole, and cut short: refused, not read as a corrupt HEIC
        with pytest.raises(ApiError) as err:
            decode_image(data, LIMIT, policy=policy)
        assert (err.value.status, err.value.code) == (415, "unsupported_format")
        assert "is a HEIC file; send a JPEG or PNG image" in err.value.message
    # JPEG's multi-picture files come with JPEG; WebP, left out, is refused although Pillow reads it
    assert decode_image(encode_as(pattern(5, (64, 48)), "MPO"), LIMIT, policy=policy).format == "MPO"
    with pytest.raises(ApiError) as err:
        decode_image(encode(pattern(3), "WEBP"), LIMIT, policy=policy)
    assert err.value.status == 415 and "is a WebP file" in err.value.message


def test_a_policy_without_jpeg_refuses_mpo_too():
    with pytest.raises(ApiError) as err:
        decode_image(encode_as(pattern(5, (64, 48)), "MPO"), LIMIT, policy=image_policy(["png"]))
    assert err.value.status == 415 and "is a JPEG file; send a PNG image" in err.value.message


def test_bytes_that_are_no_image_are_415_with_their_first_bytes_named():
    with pytest.raises(ApiError) as err:
        decode_image(b"hello, this is text", LIMIT)
    assert err.value.status == 415 and "b'hello, t'" in err.value.message


def test_empty_bytes_are_400_empty_file():
    with pytest.raises(ApiError) as err:
        decode_image(b"", LIMIT, what="file 0 ('x.png')")
    assert (err.value.status, err.value.code) == (400, "empty_file") and "x.png" in err.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_400_invalid_image(fmt):
    data = encode(pattern(5, (256, 256)), fmt)
    with pytest.raises(ApiError) as err:
        decode_image(data[: len(data) // 2], LIMIT)
    assert (err.value.status, err.value.code) == (400, "invalid_image")
    assert "truncated" in err.value.message or "corrupt" in err.value.message


def test_pixel_limit_setting_is_enforced_before_decoding():
    data = encode(pattern(1, (200, 100)), "PNG")
    assert decode_image(data, 20_000).size == (200, 100)
    with pytest.raises(ApiError) as err:
        decode_image(data, 19_999)
    assert (err.value.status, err.value.code) == (413, "image_too_large") and "200x100" in err.value.message


@pytest.mark.parametrize("side", [10_000, 20_000])   # Pillow's warning (> 89 Mpx) and error (> 179 Mpx)
def test_decompression_bomb_header_is_413_without_decoding(side):
    data = crafted.png_claiming(side, side)
    assert len(data) < 200
    with pytest.raises(ApiError) as err:
        decode_image(data, 10**12)   # our own limit out of the way: Pillow's bomb check must still fire
    assert (err.value.status, err.value.code) == (413, "image_too_large")
    assert err.value.message == f"file is {side * side} pixels; the limit is {Image.MAX_IMAGE_PIXELS} ({SETTING})"


def test_a_bomb_past_pillows_limit_is_told_the_services_own_lower_limit():
    with pytest.raises(ApiError) as err:
        decode_image(crafted.png_claiming(10_000, 10_000), 50_000, what="file 0 ('bomb.png')")
    assert err.value.message == f"file 0 ('bomb.png') is 100000000 pixels; the limit is 50000 ({SETTING})"


def test_thumbnail_is_a_jpeg_with_longest_side_the_setting_and_a_smaller_image_is_not_enlarged():
    for size, src, want in [(128, (640, 320), (128, 64)), (64, (50, 200), (16, 64)), (128, (32, 32), (32, 32)),
                            (128, (200, 90), (128, 58)), (128, (100, 300), (43, 128)), (128, (128, 20), (128, 20))]:
        thumb = Image.open(io.BytesIO(make_thumbnail(pattern(2, src), size)))
        assert thumb.format == "JPEG" and thumb.size == want


def test_thumbnail_of_transparent_png_is_flattened_on_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    thumb = Image.open(io.BytesIO(make_thumbnail(decode_image(encode(img, "PNG"), LIMIT), 32)))
    r, g, b = thumb.convert("RGB").getpixel((16, 16))
    assert min(r, g, b) > 240


@pytest.mark.anyio
async def test_a_query_image_slow_to_decode_is_decoded_apart_and_embedded_as_any_other(make_settings):
    """A large PNG (decoded whole, at full size) goes through a thread of its own, not the micro-batcher
    that everyone's small queries share (bench_slow_decode.py); its vector is the one the model gives it."""
    import model

    from app._images import slow_to_decode

    from .conftest import running
    from .test_api import upload

    big = encode(pattern(4, (2100, 2000), "RGBA"), "PNG")
    small, photo = encode(pattern(5), "PNG"), encode(pattern(6, (4000, 3000)), "JPEG", quality=80)
    assert slow_to_decode(big) and not slow_to_decode(small) and not slow_to_decode(photo)
    assert slow_to_decode(encode(pattern(7, (2100, 2000)), "WEBP")) and not slow_to_decode(b"not an image")
    settings = make_settings()
    async with running(settings) as c:
        async def slow() -> float:
            text = (await c.get("/metrics")).text
            return float(next(line.split()[-1] for line in text.splitlines()
                              if line.startswith("simsearch_slow_decode_requests_total")))

        for query in (small, photo):
            assert (await c.post("/search?k=1", files=[upload(query)])).status_code == 200
        assert await slow() == 0
        r = await c.post("/embed", files=[upload(big), upload(small)])
        assert r.status_code == 200 and await slow() == 1
        want = model.Embedder.from_file(settings.model_path, device="cpu").embed(
            [Image.open(io.BytesIO(big)), Image.open(io.BytesIO(small))])
        np.testing.assert_allclose(np.array(r.json()["vectors"]), want, atol=1e-5)
        await c.post("/index", files=[upload(big)], data={"id": "big"})
        r = await c.post("/search?k=1", files=[upload(big)])
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "big" and await slow() == 2


@pytest.mark.anyio
async def test_large_whole_decoded_images_cannot_hold_the_service_a_request_is_bounded_and_the_queue_is_short(
        make_settings):
    """From a security pass: 64 copies of a 2.5 KB 64 MP WebP in one /search held the one-at-a-time lane 43 s,
    and 64 such requests every request slot for tens of minutes. A request's whole-decoded pixels are bounded
    by what one image may hold, and past a short queue such a request is a 503 at once."""
    from .conftest import running
    from .test_api import assert_error, still_serving, upload

    settings = make_settings(max_pixels=50_000_000)
    plain = encode(Image.new("RGB", (6000, 6000), (90, 140, 30)), "PNG")   # 36 MP in about 100 KB
    async with running(settings) as c:
        err = assert_error(await c.post("/search?k=1", files=[upload(plain), upload(plain)]), 413, "image_too_large",
                           "72,000,000 pixels", "more than the 50,000,000 one request may")
        assert "JPEG" in err["message"]
        assert (await c.post("/search?k=1", files=[upload(plain)])).status_code == 200   # one fits

        async def search() -> int:
            return (await c.post("/search?k=1", files=[upload(plain)])).status_code

        results = []

        async def run_one() -> None:
            results.append(await search())

        async with anyio.create_task_group() as tg:
            for _ in range(14):
                tg.start_soon(run_one)
        # eight at most wait for the lane (one decoding): the rest are told to come back, not queued
        assert results.count(503) >= 14 - 8 and results.count(200) >= 1 and set(results) <= {200, 503}, results
        metrics = (await c.get("/metrics")).text
        assert 'simsearch_rejected_requests_total{reason="slow_decode_queue"}' in metrics
        await still_serving(c)
