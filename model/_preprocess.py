"""Any PIL image -> a fixed-size uint8 array in the model's channel layout."""
from __future__ import annotations

import io
import logging
import re
import threading
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from ._crop import Crop, check_crop, crop_box, draft_size
from ._formats import DRAFT_FORMATS

_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
DRAFTABLE_MODES = ("L", "RGB", "CMYK", "YCbCr")   # the modes a JPEG's or HEIC's draft decodes from


def to_model_array(image: Image.Image, in_chans: int, size: int, crop: Crop | None = None,
                   owned: bool = False) -> np.ndarray:
    """Orient by EXIF, keep only the region `crop` when one is given (model.parse_crop), flatten
    transparency onto white, convert to L or RGB, resize the short side to `size` and centre-crop to
    size x size. Returns uint8 (in_chans, size, size). `image` itself is never changed, unless `owned`.

    A JPEG, MPO or HEIC not decoded yet (as Image.open hands it over) is decoded at a reduced scale, as the
    service and `simsearch index build` decode every file; one already decoded (after .load(), .convert(),
    make_thumbnail) is used at full size, which gives slightly other pixels (cosine about 0.998 or more
    between the two vectors with the bundled models).

    `owned`: the caller opened `image` for this call and uses it no further (the service's uploads, files
    read by path), so it is drafted in place: the same pixels without the second opening that leaves a
    caller's image whole (822 against 796 us a 640x480 JPEG: docs/results/benchmarks.md, 47th session).

    Raises ValueError for an image with no pixels (0 wide or high), and for one whose file was closed before
    it was decoded (used after its `with Image.open(...)` block, or closed)."""
    _check_pixels(image)
    mode = "L" if in_chans == 1 else "RGB"
    if crop is not None:
        crop = check_crop(crop)
    need = draft_size(size, crop)
    if owned:
        if image.format in DRAFT_FORMATS and image.mode in DRAFTABLE_MODES:
            image.draft(mode, (need, need))
    else:
        # A JPEG or HEIC not decoded yet is decoded at a reduced scale, from a second opening of its data: the
        # caller's image is never changed (Image.draft would shrink it in place for good).
        drafted = _drafted(image, mode, need)
        image = image if drafted is None else drafted
    image = _exif_transposed(image)
    if crop is not None:
        image = image.crop(crop_box(crop, *image.size))
    image = _to_mode(_fit(_with_alpha(image), size) if _has_alpha(image) else image, mode)
    arr = np.asarray(_fit(image, size), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


_READ_LOCK = threading.Lock()   # one thread at a time copies a caller's image's bytes (_drafted)


def _check_pixels(image: Image.Image) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise ValueError(f"the image has no pixels ({w}x{h})")
    if getattr(image, "tile", None) and getattr(image, "fp", True) is None:
        # Pillow would fail with a bare AssertionError as it decodes
        name = f"{image.format} image" if image.format else "image"
        raise ValueError(f"the {name} ({w}x{h}) was closed before it was decoded (its `with Image.open(...)` "
                         "block ended, or image.close()): embed it inside the block, or call image.load() there "
                         "to keep its pixels")


def _drafted(image: Image.Image, mode: str, need: int) -> Image.Image | None:
    """A fresh opening of `image`'s not yet decoded data, in draft mode: libjpeg decodes at a reduced
    scale (never smaller than `need` x `need`), pillow-heif from the HEIC's embedded thumbnail when it is
    large enough; much cheaper for photos (a region must still have the model's size each way, so `need`
    is the size over the region's narrower fraction). None when `image` cannot be drafted: not a JPEG,
    MPO or HEIC, already decoded (its pixels are what the caller has: they are used as they are), its file
    not readable again, or the caller moved to another picture of the file (`image.seek`). Drafting a
    second opening rather than `image` itself leaves the caller's image whole: the same pixels as drafting
    it, for a header parsed twice and the file's bytes copied (microseconds, a millisecond for a 12 MP
    photo's). The second opening reads a copy of the bytes, not the caller's file object: the same image may
    be embedded from several threads at once."""
    if image.format not in DRAFT_FORMATS or image.mode not in DRAFTABLE_MODES:
        return None
    fp = getattr(image, "fp", None)
    if fp is None or getattr(fp, "closed", False):   # decoded from a file of its own, or closed
        return None
    if image.format != "HEIF" and not image.tile:   # decoded (pillow-heif keeps no tiles; it drops fp instead)
        return None
    if image.tell():   # another picture of an MPO than its first: a second opening would show the first
        return None
    try:
        # A copy of the file's bytes (compressed: a 12 MP photo's JPEG is some 3 MB, a millisecond to copy), read
        # under a lock: the fresh image decodes from its own buffer, never from the caller's file object, which
        # other threads embedding the same image seek and read meanwhile ("image file is truncated").
        with _READ_LOCK:
            position = fp.tell()
            try:
                fp.seek(0)   # where Image.open read the image from
                data = fp.read()
            finally:
                fp.seek(position)
        # MPO files are opened by the JPEG plugin
        # its EXIF was read, and any damage said, as `image` was opened
        with _exif_warnings_caught(None, said=True) if image.info.get("exif") else nullcontext():
            fresh = Image.open(io.BytesIO(data), formats=["JPEG" if image.format == "MPO" else image.format])
    except Exception:  # noqa: BLE001  (a stream that cannot seek or be read again: decode the image itself)
        return None
    if (fresh.format, fresh.size, fresh.mode) != (image.format, image.size, image.mode):
        return None
    fresh.draft(mode, (need, need))
    return fresh


def _fit(image: Image.Image, size: int) -> Image.Image:
    """The short side resized to `size`, centre-cropped to size x size (unchanged when it is that already)."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh > _WHOLE_RESIZE_LIMIT * size * size:
        # A strip-shaped image would be enlarged whole before its crop: a 3 KB PNG of 1 x 1,000,000 pixels to
        # 32 x 32,000,000 (GBs, seconds). Only the window the crop keeps is resized instead: the same centre
        # and scale, some 32x32 pixels' work. (Its pixels may differ from the whole resize's by a rounding, or
        # by the reduce step; images this narrow, longer than 64 times their width, are rare.)
        sx, sy = w / nw, h / nh
        return image.resize((size, size), Image.Resampling.BILINEAR,
                            box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    # Every other shape: the whole image resized, then cropped, as always (a gallery's stored vectors depend
    # on these very pixels).
    image = image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None if max(w, h) < 4 * size else 2.0)
    return image.crop((left, top, left + size, top + size))


#: _fit resizes the whole image only while the enlarged image holds at most this many times size x size pixels
#: (an aspect ratio up to 64:1): within it, at most 256 * size^2 bytes and milliseconds
_WHOLE_RESIZE_LIMIT = 64


_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA or (image.mode == "P" and "transparency" in image.info)


def _with_alpha(image: Image.Image) -> Image.Image:
    # RGBA or LA, which Pillow resizes with the colour weighted by alpha: shrinking before flattening onto
    # white gives the same picture, and flattening then touches the small one (an 8000x8000 PNG: 1.5 s before)
    return image if image.mode in ("RGBA", "LA") else image.convert("LA" if image.mode == "La" else "RGBA")


_ORIENTATION = 0x0112    # the EXIF tag
_TURNED = (5, 6, 7, 8)   # its values for a picture stored on its side


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as displayed, after its EXIF orientation, read from the header alone
    (nothing is decoded): a phone's portrait stored 640x480 on its side is (480, 640)."""
    w, h = image.size
    with _exif_warnings_caught(image):
        orientation = image.getexif().get(_ORIENTATION, 1)
    return (h, w) if orientation in _TURNED else (w, h)


def make_thumbnail(image: Image.Image, size: int, crop: Crop | None = None) -> bytes:
    """A JPEG thumbnail of `image` (or of its region `crop`) as displayed: oriented by EXIF, alpha on
    white, its longest side `size` pixels, or the image's own size when it is smaller. Never enlarged:
    the page scales it for display, and `simsearch index reembed` embeds from it, where an enlarged copy
    of a small image costs fidelity (docs/index.md, "A new model for a gallery"). The service and
    `simsearch index build` both store what this makes. Raises ValueError for an image with no pixels, or
    closed before it was decoded."""
    _check_pixels(image)
    image = _exif_transposed(image)
    if crop is not None:
        image = image.crop(crop_box(check_crop(crop), *image.size))
    # Transparency is flattened onto white after the shrink (RGBA and LA are resized with their colour weighted by
    # alpha: the same picture, within a level or two), so that it touches the small image: flattening a 64 MP RGBA
    # PNG first held some 730 MB more (s53 H F4). Other modes are converted first, as before (a palette image is
    # resized nearest-neighbour).
    image = _with_alpha(image) if _has_alpha(image) else _to_mode(image, "RGB")
    w, h = image.size
    scale = size / max(w, h)
    if scale < 1 and (w, h) != (round(w * scale), round(h * scale)):
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS,
                             reducing_gap=3.0)
    image = _to_mode(image, "RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _HIGH_DEPTH:
        image = _high_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == mode else image.convert(mode)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own conversion clips 16-bit grey at 255. Here each value is scaled by its type's full range, not by
    # the range the image uses: I;16 (and I holding any value over 255) by 255/65535, F by 255 when no value is over
    # 1.0 (else as it is), I otherwise as it is; then clipped to 0..255 (NaN as 0). So 12-bit data (0..4095, as
    # scientific and medical cameras write it) comes out dark, at most 16 of 255, and I values over 65535 white.
    # Kept so on purpose: stored galleries' vectors were made by it, and another scaling would change them.
    raw = np.asarray(image)
    if image.mode == "F":
        peak = 1.0 if raw.size and np.nanmax(raw) <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or (raw.size and raw.max() > 255):
        peak = 65535.0
    else:
        peak = 255.0
    # In float64 as always (the same pixels), a band of rows at a time: the whole image at once held 8 bytes a
    # pixel several times over (a 141 KB 16-bit PNG of 64 MP took 1.6 GB).
    out = np.empty(raw.shape, np.uint8)
    rows = max(1, _HIGH_DEPTH_BAND // max(1, raw.shape[1]))
    for start in range(0, raw.shape[0], rows):
        band = raw[start:start + rows].astype(np.float64)
        out[start:start + rows] = np.clip(np.nan_to_num(band) / peak * 255.0, 0, 255).round()
    return Image.fromarray(out)  # 2-D uint8 -> mode L


_HIGH_DEPTH_BAND = 1 << 18   # values _high_depth_to_l converts at a time (2 MB as float64)


# Damaged EXIF data (an IFD offset past the end, a cut APP1 segment: phones and editors write them) makes Pillow
# warn with its own source line and no file named; the image is used without EXIF orientation, as Pillow leaves
# it. Here that warning is caught and said once per image in words, to the caller's collector (`exif_notes`),
# which names the file, or else as a log line (the service's carry the request id).
_EXIF_LOG = logging.getLogger("simsearch.images")
_EXIF_LOCK = threading.Lock()   # warnings.catch_warnings changes process-wide state: one thread at a time in it
_COLLECTED = threading.local()
DAMAGED_EXIF = "its EXIF data is damaged ({why}); it is used without EXIF orientation"


@contextmanager
def exif_notes() -> Iterator[list[str]]:
    """Collect, in this thread, why the EXIF data of the images handled inside is damaged (Pillow's words, once per
    image), in place of the log line each gives otherwise (`DAMAGED_EXIF`): the caller names the file."""
    outer = getattr(_COLLECTED, "notes", None)
    _COLLECTED.notes = notes = []
    try:
        yield notes
    finally:
        _COLLECTED.notes = outer


def open_image(data: bytes, formats: list[str] | tuple[str, ...] | None = None) -> Image.Image:
    """`Image.open` of an image's bytes (`formats`: Pillow's), with what damaged EXIF data makes Pillow warn said
    as `exif_notes` says it (a JPEG's EXIF is read as it is opened, for its DPI). Bytes with no EXIF block in
    their first 64 KiB, where a JPEG's APP1 lies, are opened as they are, without the lock.

    A JPEG of more than MAX_JPEG_SCANS scans, or of more than MAX_JPEG_HEADER_SEGMENTS marker segments before its
    first scan, raises JpegScanBomb (a DecompressionBombError) before Pillow reads it: see check_jpeg_scans."""
    if formats is None or "JPEG" in formats:
        check_jpeg_scans(data)
    if b"Exif\x00\x00" not in data[:65536]:
        return Image.open(io.BytesIO(data), formats=formats)
    with _exif_warnings_caught(None):
        return Image.open(io.BytesIO(data), formats=formats)


#: The most scans (SOS segments) a JPEG's first picture may have. libjpeg reads every block of the image again for
#: each scan of a progressive JPEG, and its API has no limit: a 325 KB file of 20,000 empty 10-byte scans over
#: 8000 x 8000 pixels took 86 s of CPU (4.8 ms a scan), a 10 MB one some 80 minutes (from a security pass).
#: Encoders write far fewer: libjpeg's progressive mode 10 for a colour photo, 6 per component otherwise (24 for
#: CMYK, 60 for the 10 components libjpeg allows at most); mozjpeg's scan search picks some 10-20 of its 64
#: candidates. 100 leaves room above all of them, and costs at most 0.5 s at 64 MP.
MAX_JPEG_SCANS = 100
#: The most marker segments (APPn, DQT, DHT, COM, ...) before a JPEG's first scan: some 10-40 in what cameras and
#: editors write (an ICC profile takes at most 255 APP2 segments). Past it the service cannot read the frame header
#: cheaply from the request's bytes (app/_images.py), so such a file is refused rather than read.
MAX_JPEG_HEADER_SEGMENTS = 1000
# The next marker of a JPEG: an FF (with any fill FFs before it) that is not the FF 00 of a byte stuffed in entropy
# coded data, nor a restart marker (FF D0-D7) within it
_JPEG_MARKER = re.compile(rb"\xff+([\x01-\xcf\xd8-\xfe])")


class JpegScanBomb(Image.DecompressionBombError):
    """A JPEG whose decoding would cost far more than its pixels: more scans than MAX_JPEG_SCANS, or more marker
    segments before its first scan than MAX_JPEG_HEADER_SEGMENTS."""


def jpeg_markers(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset just past it) of each marker of a JPEG after its SOI, walking its segments by their lengths
    as libjpeg reads them (a marker's segment, its length counting its own two bytes, is stepped over whole; the
    entropy-coded data after a scan's header is searched for the next marker, its stuffed FF 00 and restart markers
    skipped), so that the bytes of an EXIF thumbnail, an ICC profile or an MPO's other pictures (whole JPEGs of
    their own inside or after it) are not taken for markers. TEM and SOI, which have no length, are yielded too.
    Ends where the data does; the caller stops at EOI (D9), where the decoder does, or sooner."""
    pos, end = 2, len(data)
    while True:
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return
        marker, pos = found.group(1)[0], found.end()
        yield marker, pos
        if marker in (0x01, 0xD8):   # TEM, SOI: no length
            continue
        if pos + 2 > end:
            return
        pos += max(2, int.from_bytes(data[pos:pos + 2], "big"))


def jpeg_segments(data: bytes, stop_scans: int, stop_segments: int = MAX_JPEG_HEADER_SEGMENTS) -> tuple[int, int]:
    """(marker segments before the first scan, scans) of a JPEG's first picture (jpeg_markers), up to the first
    EOI. The walk stops once `stop_scans` scans or `stop_segments` segments before the first scan are counted."""
    segments, scans = 0, 0
    for marker, _ in jpeg_markers(data):
        if marker == 0xD9:   # EOI
            break
        if marker in (0x01, 0xD8):   # TEM, SOI: no segment
            continue
        if marker == 0xDA:
            scans += 1
            if scans >= stop_scans:
                break
        elif not scans:
            segments += 1
            if segments >= stop_segments:
                break
    return segments, scans


def check_jpeg_scans(data: bytes) -> None:
    """Raise JpegScanBomb for a JPEG of more scans than MAX_JPEG_SCANS or more marker segments before its first
    scan than MAX_JPEG_HEADER_SEGMENTS; nothing for any other bytes. The bytes FF DA, which begin every scan,
    are counted first (in C: a millisecond for 10 MB); only a JPEG holding more of them than the limit (inside
    an ICC profile or EXIF data they may occur by chance) has its scans counted segment by segment."""
    if data[:2] != b"\xff\xd8":
        return
    many = data.count(b"\xff\xda") > MAX_JPEG_SCANS
    segments, scans = jpeg_segments(data, MAX_JPEG_SCANS + 1 if many else 1)
    if scans > MAX_JPEG_SCANS:
        raise JpegScanBomb(f"a JPEG of more than {MAX_JPEG_SCANS} scans is refused: each scan is a pass of the "
                           "decoder over the whole image (encoders write some 10 to 60)")
    if segments >= MAX_JPEG_HEADER_SEGMENTS:
        raise JpegScanBomb(f"a JPEG of {MAX_JPEG_HEADER_SEGMENTS} or more marker segments before its first scan is "
                           "refused (encoders write some 10 to 40)")


def _exif_transposed(image: Image.Image) -> Image.Image:
    # Decoded first, outside the lock (exif_transpose's own first step, then a no-op): only the reading of EXIF
    # data is one thread at a time, never a decode (a JPEG with a JFIF density has its EXIF read only here).
    # An image with nothing to turn is used as it is: exif_transpose would hand back a whole copy (244 MB for a
    # 64 MP RGBA PNG, s53 H F4); nothing here changes the image it returns in place.
    image.load()
    with _exif_warnings_caught(image):
        if image.getexif().get(_ORIENTATION, 1) not in _TRANSPOSED:
            return image
        return ImageOps.exif_transpose(image)


_TRANSPOSED = (2, 3, 4, 5, 6, 7, 8)   # the orientations exif_transpose turns or flips


@contextmanager
def _exif_warnings_caught(image: Image.Image | None, said: bool = False) -> Iterator[None]:
    """Pillow's warnings while `image`'s EXIF data is read (None: an image is opened) said once in words (see
    above); other warnings raised meanwhile are passed on as they were. An image whose EXIF bytes were read (or
    that has none) is not read again, and needs no lock. `said`: damage is caught and not said again."""
    if image is not None and (not image.info.get("exif") or getattr(image, "_exif", None) is not None
                              and image._exif._loaded):
        yield
        return
    with _EXIF_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    exif = [w for w in caught if issubclass(w.category, UserWarning) and "EXIF" in str(w.message)]
    for w in caught:
        if w not in exif:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if exif and not said:
        why = " ".join(str(exif[0].message).split())
        notes = getattr(_COLLECTED, "notes", None)
        if notes is None:
            _EXIF_LOG.warning("an image: %s", DAMAGED_EXIF.format(why=why))
        elif why not in notes:
            notes.append(why)
