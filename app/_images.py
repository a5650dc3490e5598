"""Image bytes -> a decoded PIL image, with the format decided from the bytes against an allow-list,
a pixel limit checked before any pixel is decoded, and every failure mapped to a client error."""
from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from PIL import Image, UnidentifiedImageError

from model import AVIF_READABLE, DRAFT_FORMATS, DRAFTABLE_MODES, HEIF_READABLE, MAX_JPEG_HEADER_SEGMENTS, jpeg_markers
from model import DAMAGED_EXIF, exif_notes, open_image

from ._errors import REQUEST_ID, ApiError

_LOG = logging.getLogger("simsearch.images")
#: What raises the service's pixel limit, said in its 413s
PIXELS_SETTING = "SIMSEARCH_MAX_PIXELS, or `simsearch serve --max-pixels`"

T = TypeVar("T")

# What phones and cameras write is allowed: MPO (a JPEG with more pictures after it; its first is
# read, by the JPEG decoder), and AVIF and HEIC/HEIF where this Pillow can read them. Everything else
# Pillow could open (TIFF, EPS, FITS, ...) is refused, so its decoders are never reached. An operator
# may narrow the list further (SIMSEARCH_IMAGE_FORMATS), e.g. to keep libheif away from uploads.
FORMAT_NAMES = ("jpeg", "png", "webp", "gif", "bmp", "avif", "heif")  # what SIMSEARCH_IMAGE_FORMATS takes
_OPENER = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "avif": "AVIF", "heif": "HEIF"}
_READABLE = {"avif": AVIF_READABLE, "heif": HEIF_READABLE}
_ISO_BRANDS = {"avif": "AVIF", "avis": "AVIF", "heic": "HEIC", "heix": "HEIC", "heim": "HEIC", "heis": "HEIC",
               "hevc": "HEIC", "hevx": "HEIC", "mif1": "HEIF", "msf1": "HEIF"}


@dataclass(frozen=True)
class ImagePolicy:
    """The formats uploads may be in: `openers` go to Image.open, `allowed` are the formats it may hand
    back (the JPEG opener returns MPO files as MPO), `text` names them for error messages."""

    openers: tuple[str, ...]

    @property
    def allowed(self) -> tuple[str, ...]:
        return (*self.openers, "MPO") if "JPEG" in self.openers else self.openers

    @property
    def text(self) -> str:
        names = [{"WEBP": "WebP", "HEIF": "HEIC/HEIF"}.get(f, f) for f in self.openers]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def image_policy(names: Iterable[str] = FORMAT_NAMES) -> ImagePolicy:
    """The policy for these FORMAT_NAMES, less AVIF/HEIF where this Pillow cannot read them."""
    picked = [n for n in FORMAT_NAMES if n in set(names) and _READABLE.get(n, True)]
    if not picked:
        raise ValueError(f"none of the image formats {sorted(set(names))} can be read here")
    return ImagePolicy(tuple(_OPENER[n] for n in picked))


DEFAULT_POLICY = image_policy()

# Names for formats we refuse, recognised from their first bytes only (no decoder is involved),
# so that the error can say what was sent.
_KNOWN_OTHER = [
    (b"%PDF", "PDF"), (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"icns", "ICNS"),
    (b"\x00\x00\x01\x00", "ICO"), (b"gd2\x00", "GD2"), (b"\xff\xfe", "GD"), (b"\xff\xff", "GD"),
    (b"P1", "PBM/PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PBM"), (b"P5", "PGM"), (b"P6", "PPM"),
    (b"<?xml", "XML/SVG"), (b"<svg", "SVG"), (b"\x89HDF", "HDF5"), (b"DDS ", "DDS"), (b"qoif", "QOI"),
    (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"#define", "XBM"), (b"/* XPM */", "XPM"),
]


SLOW_DECODE_PIXELS = 4_000_000   # a PNG of 2000 x 2000 takes about 0.1 s to decode whole on this machine
_PNG = b"\x89PNG\r\n\x1a\n"


def slow_to_decode(data: bytes, policy: ImagePolicy = DEFAULT_POLICY, pixels: int = SLOW_DECODE_PIXELS,
                   need: int | None = None) -> bool:
    """Whether decoding `data` is slow: more than `pixels` pixels decoded at once (whole_decode_size). From the
    header alone; False for what is not an image of the policy's formats (decode_image says what is wrong with
    it)."""
    return whole_decode_pixels(data, policy, need) > pixels


def whole_decode_pixels(data: bytes, policy: ImagePolicy = DEFAULT_POLICY, need: int | None = None) -> int:
    """The pixels decoding `data` must hold at once (whole_decode_size's width x height). From the header alone."""
    width, height = whole_decode_size(data, policy, need)
    return width * height


def whole_decode_size(data: bytes, policy: ImagePolicy = DEFAULT_POLICY, need: int | None = None) -> tuple[int, int]:
    """(width, height) of what decoding `data` holds at once, from the header alone: an image in a format decoded
    whole (PNG, WebP, GIF, BMP, AVIF) at its size; a progressive JPEG at its size too, whatever its draft, since
    libjpeg keeps the coefficients of the whole image while it reads the scans (2 to 6 bytes a pixel: 372 MB for a
    64 MP one of 4:4:4, 494 MB in CMYK); another JPEG, or a HEIC, at the size its draft for a square of `need`
    pixels decodes (model.draft_size: a JPEG at 1/8 to 1/1 of its size, a HEIC from an embedded thumbnail that is
    large enough, else whole), and (0, 0) without `need` (decoded at the model's scale); (0, 0) for what is not an
    image of the policy's formats."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_decode_size(data, need) if "JPEG" in policy.openers else (0, 0)
    if data[:8] == _PNG and len(data) >= 24 and "PNG" in policy.openers:   # IHDR's, without Pillow (the common query)
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a bomb's warning is decode_image's to give
            with Image.open(io.BytesIO(data), formats=policy.openers) as img:
                if img.format not in DRAFT_FORMATS or img.mode not in DRAFTABLE_MODES:
                    return img.size
                if not need:
                    return 0, 0
                img.draft(None, (need, need))   # a HEIC's thumbnail chosen, from its header: nothing decoded
                return img.size
    except Exception:  # noqa: BLE001
        return 0, 0


#: How many times its pixels an image in a format that Pillow decodes in Python counts in a request's pixel budget:
#: an RLE-compressed BMP (4 or 8 bits a pixel), whose runs BmpImagePlugin expands a pixel at a time. A 528 KB one
#: of 64 MP took 3.6 to 6.3 s and 368 MB where a 64 MP PNG takes 0.8 s (s53 H F5): 8 times a PNG's time a pixel.
RLE_BMP_COST = 8


def decode_cost(data: bytes, policy: ImagePolicy = DEFAULT_POLICY) -> int:
    """How many times its pixels decoding `data` counts in a request's pixel budget: RLE_BMP_COST for an RLE BMP
    (its BITMAPINFOHEADER's compression 1 or 2), else 1. From the header alone."""
    if data[:2] == b"BM" and len(data) >= 34 and "BMP" in policy.openers:
        header_size, = struct.unpack("<I", data[14:18])
        if header_size >= 40 and struct.unpack("<I", data[30:34])[0] in (1, 2):   # BI_RLE8, BI_RLE4
            return RLE_BMP_COST
    return 1


# A JPEG's frame headers (SOFn): the markers C0-CF but DHT (C4), JPG (C8) and DAC (CC); C2, C6, CA and CE are
# progressive
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg_decode_size(data: bytes, need: int | None) -> tuple[int, int]:
    """whole_decode_size of a JPEG (or MPO: its first picture), from its frame header, found by walking its
    segments by their lengths (model.jpeg_markers; Pillow would read its EXIF data too, on the event loop); (0, 0)
    when it has none among its first segments (model.open_image refuses a JPEG of more before its first scan:
    decode_image says what is wrong)."""
    for count, (marker, pos) in enumerate(jpeg_markers(data)):
        if count >= MAX_JPEG_HEADER_SEGMENTS or marker in (0xD9, 0xDA):   # EOI, or a scan before any frame header
            break
        if marker in _JPEG_FRAMES and pos + 7 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            if marker in _JPEG_PROGRESSIVE:
                return width, height
            if not need:
                return 0, 0
            scale = min(width // need, height // need)   # as Pillow's JpegImageFile.draft picks it
            s = next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)
            return (width + s - 1) // s, (height + s - 1) // s
    return 0, 0


def sniff_allowed(data: bytes, policy: ImagePolicy = DEFAULT_POLICY) -> str | None:
    """Name a format the policy allows from its magic bytes (None when not recognised)."""
    name, opener = _sniff_known(data)
    return name if opener in policy.openers else None


def _sniff_known(data: bytes) -> tuple[str | None, str | None]:
    """(name for messages, Pillow opener) of a format the service can read, from its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF", "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP", "WEBP"
    if data.startswith(b"BM"):
        return "BMP", "BMP"
    brand = _iso_brand(data)
    if brand == "AVIF" and AVIF_READABLE:
        return brand, "AVIF"
    if brand in ("HEIC", "HEIF") and HEIF_READABLE:
        return brand, "HEIF"
    return None, None


def _iso_brand(data: bytes) -> str | None:
    """AVIF, HEIC or HEIF from an ISO media file's major brand; "ISO media" for another brand."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _ISO_BRANDS.get(data[8:12].decode("latin-1", "replace"), "ISO media")
    return None


def sniff_unsupported(data: bytes) -> str | None:
    """Name a refused format from its magic bytes (None when not recognised). A format the service
    could read but the policy refuses is named by sniff_allowed's name for it."""
    known, _ = _sniff_known(data)
    if known:
        return known
    brand = _iso_brand(data)
    if brand:
        return brand
    for magic, name in _KNOWN_OTHER:
        if data.startswith(magic):
            return name
    return None


def decode_image(data: bytes, max_pixels: int, draft: int | None = None, what: str = "file",
                 convert: Callable[[Image.Image], T] | None = None,
                 policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image | T:
    """Decode image bytes into a fully loaded PIL image, or into `convert(image)`.

    The format is identified from the bytes by Pillow restricted to `policy`'s formats (the
    Content-Type is ignored); width x height is checked against `max_pixels` before decoding, and
    Pillow's DecompressionBombWarning is an error. `draft` lets JPEG (and MPO, HEIC) decode at a reduced
    scale no smaller than draft x draft. `convert` receives the opened, not yet decoded image and does the
    decoding itself (e.g. Embedder.preprocess, which drafts JPEGs to the model's size exactly as
    for images read from disk); its failures are reported like decoding failures.
    Raises ApiError: 400 empty or corrupt/truncated, 413 too many pixels, 415 a format outside the
    allow-list or not an image. `what` names the part in messages.
    """
    if not data:
        raise ApiError(400, "empty_file", f"{what} is empty (0 bytes)")
    with exif_notes() as said:
        decoded = _decoded(data, max_pixels, draft, what, convert, policy)
    for why in said:   # the image is used without EXIF orientation, as Pillow leaves it
        _LOG.warning("%s: %s (request_id=%s)", what, DAMAGED_EXIF.format(why=why), REQUEST_ID.get() or "-")
    return decoded


def _decoded(data: bytes, max_pixels: int, draft: int | None, what: str, convert: Callable[[Image.Image], T] | None,
             policy: ImagePolicy) -> Image.Image | T:
    """decode_image's work, the bytes not empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = open_image(data, formats=policy.openers)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ApiError(413, "image_too_large", _bomb_message(what, exc, max_pixels)) from None
        except UnidentifiedImageError:
            allowed = sniff_allowed(data, policy)
            if allowed:
                raise ApiError(400, "invalid_image", f"{what} starts like a {allowed} image but its header "
                                                     "is corrupt or truncated") from None
            other = sniff_unsupported(data)
            if other:
                raise ApiError(415, "unsupported_format",
                               f"{what} is {_a(other)} file; send a {policy.text} image") from None
            raise ApiError(415, "unsupported_format",
                           f"{what} is not a {policy.text} image (first bytes {data[:8]!r})") from None
        except Exception as exc:  # a malformed header of an allowed format
            raise ApiError(400, "invalid_image", f"{what}: cannot read the image header: {exc}") from None
        if img.format not in policy.allowed:  # a plugin that hands back another format than its own
            raise ApiError(415, "unsupported_format",
                           f"{what} is {_a(img.format)} file; send a {policy.text} image")
        w, h = img.size
        if w * h > max_pixels:
            raise ApiError(413, "image_too_large",
                           f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} ({PIXELS_SETTING})")
        if w < 1 or h < 1:
            raise ApiError(400, "invalid_image", f"{what} has no pixels ({w}x{h})")
        try:
            if convert is not None:
                return convert(img)
            if draft and img.format in DRAFT_FORMATS:
                img.draft(None, (draft, draft))
            img.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ApiError(413, "image_too_large", _bomb_message(what, exc, max_pixels)) from None
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, ...
            raise ApiError(400, "invalid_image", f"{what}: the image data is corrupt or truncated: {exc}") from None
    return img


# Format names said letter by letter from a consonant that sounds like a vowel ("an SVG")
_SAID_AN = {"SVG", "XML/SVG", "SGI", "HDF5", "XBM", "XPM", "MSP", "MPEG", "MPO"}


def _a(name: str) -> str:
    """'a TIFF', 'an ICO', 'an SVG': the article for a format's name."""
    return ("an " if name[:1].upper() in "AEIOU" or name in _SAID_AN else "a ") + name


def _bomb_message(what: str, exc: Exception, max_pixels: int) -> str:
    # Pillow refuses past its own process-wide limit, which the app only ever raises to max_pixels: say the
    # limit that applies rather than Pillow's.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if not found:
        return f"{what}: {exc}"
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return f"{what} is {int(found.group(1))} pixels; the limit is {limit} ({PIXELS_SETTING})"
