"""A region of an image to embed instead of the whole of it: `crop=left,top,right,bottom`, fractions of
the image's width and height as it is displayed (after its EXIF orientation). Pure Python, so that the HTTP
clients can check a region without loading torch."""
from __future__ import annotations

import math

#: (left, top, right, bottom), each in 0..1, left < right and top < bottom
Crop = tuple[float, float, float, float]

_FORM = ("four numbers left,top,right,bottom, fractions (0 to 1) of the image's width and height, "
         "with left < right and top < bottom, e.g. 0.25,0.1,0.75,0.9")


def parse_crop(text: str) -> Crop:
    """'left,top,right,bottom' -> a checked Crop. Raises ValueError naming what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"crop={text!r} must be {_FORM}") from None
    if len(values) != 4:
        raise ValueError(f"crop={text!r} has {len(values)} number{'s' if len(values) != 1 else ''}; it must be {_FORM}")
    return check_crop(values)  # type: ignore[arg-type]


def check_crop(crop: Crop) -> Crop:
    """`crop` (four numbers, or their text as parse_crop reads it) as a tuple of floats when it is a region of
    the image; ValueError otherwise."""
    if isinstance(crop, str):
        return parse_crop(crop)
    try:
        values = tuple(float(v) for v in crop)
    except (TypeError, ValueError):
        raise ValueError(f"crop={crop!r} must be {_FORM}") from None
    if len(values) != 4:
        raise ValueError(f"crop={crop!r} has {len(values)} values; it must be {_FORM}")
    left, top, right, bottom = values
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (left, top, right, bottom)):
        raise ValueError(f"crop {_text(crop)}: every value must be between 0 and 1 (fractions of the image's "
                         "width and height)")
    if not (left < right and top < bottom):
        raise ValueError(f"crop {_text(crop)}: left must be less than right and top less than bottom (it is "
                         "left,top,right,bottom)")
    return left, top, right, bottom


def crop_box(crop: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) of `crop` in a width x height image: outward to whole pixels, and
    at least one pixel each way, so that a thin region of a small image still has pixels."""
    left, top, right, bottom = crop
    x0, y0 = min(math.floor(left * width), width - 1), min(math.floor(top * height), height - 1)
    x1, y1 = max(math.ceil(right * width), x0 + 1), max(math.ceil(bottom * height), y0 + 1)
    return x0, y0, min(x1, width), min(y1, height)


def draft_size(size: int, crop: Crop | None) -> int:
    """The side to ask a JPEG or HEIC decoder's draft mode for (a square no smaller than it), so that the
    region `crop` of the decoded image still has `size` pixels each way, whatever the image's shape or
    orientation. At most _MAX_DRAFT_SIDE (more than any image's side: a full-size decode), so that a region
    of a few pixels' width, down to the smallest float (`crop=0,0,5e-324,1`), never overflows."""
    if crop is None:
        return size
    side = size / min(crop[2] - crop[0], crop[3] - crop[1])   # inf for a width under size / 1.8e308
    return _MAX_DRAFT_SIDE if not side < _MAX_DRAFT_SIDE else math.ceil(side)


_MAX_DRAFT_SIDE = 1 << 31   # no image has a side as long (JPEG's and PNG's limits: 65,535 and 2^31 - 1)


def _text(crop) -> str:
    return ",".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in crop)
