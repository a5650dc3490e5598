"""Damaged EXIF data said in words, once per image, and photos told by their first bytes (the own-photos hunt,
51st session)."""
from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from model import displayed_size, make_thumbnail, to_model_array
from model._formats import IMAGE_HEAD_BYTES, looks_like_image
from model._preprocess import exif_notes, open_image

DAMAGED_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"   # its first IFD 2 GB past the end, as editors write them
PILLOWS_WORDS = "Corrupt EXIF data. Expecting to read 2 bytes but only got 0."


def _encoded(fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(out, fmt, **kw)
    return out.getvalue()


def test_damaged_exif_is_collected_once_per_image_and_the_image_used_unturned():
    data = _encoded("JPEG", exif=DAMAGED_EXIF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw UserWarning would raise here
        with exif_notes() as said:
            im = open_image(data)
            arr = to_model_array(im, 3, 32)   # a second opening of its bytes, drafted: not said again
            size = displayed_size(im)
            make_thumbnail(im, 16)
    assert said == [PILLOWS_WORDS]
    assert size == (40, 30) and arr.shape == (3, 32, 32)
    assert np.abs(arr.astype(int)[0].mean() - 200) < 8   # the picture, unturned


def test_damaged_exif_outside_a_collector_is_one_log_line_in_words(caplog):
    with caplog.at_level(logging.WARNING, logger="simsearch.images"), warnings.catch_warnings():
        warnings.simplefilter("error")
        to_model_array(open_image(_encoded("JPEG", exif=DAMAGED_EXIF)), 3, 32, owned=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"an image: its EXIF data is damaged ({PILLOWS_WORDS}); it is used without EXIF orientation"]


def test_sound_exif_says_nothing_and_turns_the_image():
    exif = Image.Exif()
    exif[0x0112] = 6   # stored on its side
    with exif_notes() as said:
        im = open_image(_encoded("JPEG", exif=exif.tobytes()))
        assert displayed_size(im) == (30, 40)
    assert said == []


@pytest.mark.parametrize("fmt, kw", [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}),
                                     ("TIFF", {})])
def test_an_image_is_told_by_its_first_bytes(fmt, kw):
    assert looks_like_image(_encoded(fmt, **kw)[:IMAGE_HEAD_BYTES])


@pytest.mark.parametrize("head", [b"", b"BMW notes: 12 pages", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(8),
                                  b"Bud1" + bytes(12), b"RIFF\x00\x00\x00\x00WAVEfmt ", b"\x00\x00\x00\x18ftypmp42"])
def test_other_files_are_not_taken_for_images(head):
    assert not looks_like_image(head[:IMAGE_HEAD_BYTES])
