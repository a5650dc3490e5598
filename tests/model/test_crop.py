"""A region of an image (`crop=left,top,right,bottom`, fractions of the image as displayed) becomes the
model input and the thumbnail of that region cut out, from every format and orientation, and a wrong
region is refused with what is wrong."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import model

_ORIENTATION = 0x0112


def _scene(size=(640, 480)) -> Image.Image:
    """Four flat quadrants, red / green / blue / white, so that a region's colour says where it came from."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 255)
    return Image.fromarray(a)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _mean_colour(arr: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in arr.reshape(arr.shape[0], -1).mean(axis=1))


def test_parse_crop_reads_four_fractions_and_says_what_is_wrong_with_anything_else():
    assert model.parse_crop("0.25,0.1, 0.75 ,0.9") == (0.25, 0.1, 0.75, 0.9)
    assert model.parse_crop("0,0,1,1") == (0.0, 0.0, 1.0, 1.0)
    for text, words in [("0.1,0.2,0.3", "has 3 numbers"), ("a,b,c,d", "must be four numbers"),
                        ("", "must be four numbers"), ("0.5,0,0.4,1", "left must be less than right"),
                        ("0,0.6,1,0.6", "top less than bottom"), ("0,0,1,1.5", "between 0 and 1"),
                        ("-0.1,0,1,1", "between 0 and 1"), ("nan,0,1,1", "between 0 and 1"),
                        ("0,0,inf,1", "between 0 and 1")]:
        with pytest.raises(ValueError) as err:
            model.parse_crop(text)
        assert words in str(err.value) and "crop" in str(err.value), (text, str(err.value))


def test_the_whole_image_as_a_crop_is_exactly_the_image_itself():
    for data in (_bytes(_scene(), "JPEG", quality=90), _bytes(_scene(), "PNG")):
        np.testing.assert_array_equal(model.to_model_array(_open(data), 3, 32, (0, 0, 1, 1)),
                                      model.to_model_array(_open(data), 3, 32))


def test_a_region_is_embedded_exactly_as_that_region_cut_out_and_sent_alone():
    scene = _scene()
    data = _bytes(scene, "PNG")   # no draft mode for PNG: the region's pixels are the cut-out's exactly
    for crop, box in [((0.5, 0.0, 1.0, 0.5), (320, 0, 640, 240)), ((0.1, 0.3, 0.7, 0.95), (64, 144, 448, 456))]:
        np.testing.assert_array_equal(model.to_model_array(_open(data), 3, 32, crop),
                                      model.to_model_array(scene.crop(box), 3, 32))
    green = model.to_model_array(_open(data), 3, 32, (0.5, 0.0, 1.0, 0.5))
    assert _mean_colour(green) == (0, 255, 0)


def test_a_small_region_of_a_large_jpeg_still_gets_enough_pixels_from_the_reduced_scale_decoding():
    # 4000x3000 with a 5 % region around the corner where the four quadrants meet: libjpeg may decode at
    # 1/2 .. 1/8 scale only while the region keeps 32 px, and the quadrants' edges must stay in place
    data = _bytes(_scene((4000, 3000)), "JPEG", quality=92)
    crop = (0.475, 0.475, 0.525, 0.525)
    region = model.to_model_array(_open(data), 3, 32, crop)
    need = model.draft_size(32, model.parse_crop(",".join(map(str, crop))))
    drafted = _open(data)
    drafted.draft("RGB", (need, need))
    np.testing.assert_array_equal(region, model.to_model_array(drafted, 3, 32, crop))  # made from this decoding:
    assert drafted.size[0] < 4000  # decoded at a reduced scale ...
    assert drafted.size[0] * 0.05 >= 32 and drafted.size[1] * 0.05 >= 32   # ... that leaves the region 32 px
    whole = _open(data)
    whole.load()   # decoded at full size: no draft any more
    reference = model.to_model_array(whole, 3, 32, crop)
    assert np.abs(region.astype(int) - reference).mean() < 4


def test_a_region_is_of_the_photo_as_displayed_after_its_exif_orientation():
    # Stored landscape with orientation 6 (turn 90 degrees clockwise to display), as phones write portraits:
    # displayed, the stored top-left quadrant (red) is at the top right.
    stored = _scene()
    exif = stored.getexif()
    exif[_ORIENTATION] = 6
    data = _bytes(stored, "JPEG", quality=95, exif=exif)
    top_right = model.to_model_array(_open(data), 3, 32, (0.5, 0.0, 1.0, 0.5))
    r, g, b = _mean_colour(top_right)
    assert r > 230 and g < 25 and b < 25, (r, g, b)


def test_a_thumbnail_of_a_region_shows_that_region_upright_and_never_enlarged():
    stored = _scene()
    exif = stored.getexif()
    exif[_ORIENTATION] = 6
    data = _bytes(stored, "JPEG", quality=95, exif=exif)
    whole = _open(model.make_thumbnail(_open(data), 128))
    assert whole.size == (96, 128)   # displayed portrait: 480x640
    region = _open(model.make_thumbnail(_open(data), 128, (0.5, 0.0, 1.0, 0.5)))
    assert region.size == (96, 128)   # 240x320 of the displayed picture, longest side 128
    r, g, b = np.asarray(region.convert("RGB")).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25
    tiny = _open(model.make_thumbnail(_open(data), 128, (0.5, 0.0, 0.55, 0.05)))
    assert tiny.size == (24, 32)   # 24x32 pixels of the picture: kept at its own size


def test_the_pixel_box_of_a_region_is_whole_pixels_outward_and_never_empty():
    assert model.crop_box((0.25, 0.25, 0.75, 0.75), 640, 480) == (160, 120, 480, 360)
    assert model.crop_box((0.001, 0.001, 0.002, 0.002), 32, 32) == (0, 0, 1, 1)
    assert model.crop_box((0.999, 0.999, 1.0, 1.0), 32, 32) == (31, 31, 32, 32)
