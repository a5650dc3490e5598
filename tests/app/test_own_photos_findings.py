"""What the service says of an upload whose EXIF data is damaged, and the 413 of an image over its pixel limit
(the own-photos hunt, 51st session)."""
from __future__ import annotations

import io
import logging
import warnings

import pytest
from PIL import Image

from app._errors import REQUEST_ID, ApiError
from app._images import decode_image

DAMAGED_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"   # its first IFD 2 GB past the end, as editors write them


def _jpeg(exif: bytes | None = None, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 200, 20)).save(out, "JPEG", **({"exif": exif} if exif else {}))
    return out.getvalue()


def test_an_upload_with_damaged_exif_is_decoded_and_logged_with_its_name_and_request_id(caplog):
    token = REQUEST_ID.set("req-42")
    try:
        with caplog.at_level(logging.WARNING, logger="simsearch.images"), warnings.catch_warnings():
            warnings.simplefilter("error")   # Pillow's bare UserWarning would raise here
            img = decode_image(_jpeg(DAMAGED_EXIF), 10_000_000, what="file 0 ('IMG_1.jpg')")
    finally:
        REQUEST_ID.reset(token)
    assert img.size == (40, 30)   # used, as it is
    assert [r.getMessage() for r in caplog.records] == [
        "file 0 ('IMG_1.jpg'): its EXIF data is damaged (Corrupt EXIF data. Expecting to read 2 bytes but only got "
        "0.); it is used without EXIF orientation (request_id=req-42)"]


def test_the_413_of_an_image_over_the_pixel_limit_names_the_setting_that_raises_it():
    with pytest.raises(ApiError) as err:
        decode_image(_jpeg(size=(200, 100)), 10_000, what="file 0 ('pano.jpg')")
    assert err.value.status == 413
    assert err.value.message == ("file 0 ('pano.jpg') is 200x100 = 20000 pixels; the limit is 10000 "
                                 "(SIMSEARCH_MAX_PIXELS, or `simsearch serve --max-pixels`)")
