"""One decoding of a JPEG for both the model's input and the thumbnail, where their two drafts agree."""
from __future__ import annotations

from PIL import Image

from ._formats import DRAFT_FORMATS


def thumbnail_draft(drafted: Image.Image, fresh: Image.Image, side: int) -> Image.Image:
    """The image to make a thumbnail from (model.make_thumbnail), decoded at the thumbnail's draft scale.

    `drafted` is a JPEG, MPO or HEIC already drafted and decoded for the model (to_model_array with
    owned=True); `fresh` a new opening of the same bytes, not decoded yet. `fresh` is drafted in place for a
    square of `side` (Image.draft(None, ...), as the thumbnail's own decoding asks) and returned, to be
    decoded by the caller; or `drafted` is returned when that draft decodes the very same pixels: a JPEG or
    MPO whose two drafts come out at the same scale and mode (with a 32-pixel model and 128-pixel thumbnails:
    CIFAR's 32x32 and a phone's 12 MP, both at 1/8, but not a 640x480 photo, at 1/8 and 1/2), decoded
    once (`drafted` is then loaded, if it was not yet)."""
    if fresh.format in DRAFT_FORMATS:
        fresh.draft(None, (side, side))
    same = (fresh.format in ("JPEG", "MPO") and drafted.format == fresh.format
            and (fresh.mode, fresh.size, getattr(fresh, "decoderconfig", None))
            == (drafted.mode, drafted.size, getattr(drafted, "decoderconfig", None)))
    if not same:
        return fresh
    drafted.load()   # already decoded by the model's preprocessing: nothing is decoded again
    return drafted
