"""One picture as the files phones and cameras write, for the tests of every layer that reads them."""
from __future__ import annotations

import io

from PIL import Image

PHONE_FORMATS = ("MPO", "HEIC", "AVIF")
SUFFIX = {"MPO": ".mpo", "HEIC": ".heic", "AVIF": ".avif", "JPEG": ".jpg"}


def phone_sized(img: Image.Image) -> Image.Image:
    """`img` (a 32x32 CIFAR-10 picture, say) enlarged to 640x480 RGB, a phone photo's shape."""
    return img.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)


def made_up_photo(background: bytes, obj: bytes, box: tuple[int, int, int, int],
                  size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A 'photo' of a scene with a thing in it: the image `background` scaled up to fill a `size` frame, and
    the image `obj` scaled into `box` (x0, y0, x1, y1) on top of it (what `crop=` is for)."""
    scene = Image.open(io.BytesIO(background)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    thing = Image.open(io.BytesIO(obj)).convert("RGB").resize((box[2] - box[0], box[3] - box[1]),
                                                              Image.Resampling.BICUBIC)
    scene.paste(thing, box[:2])
    return scene


def encode_as(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """`img` as JPEG, MPO (two pictures: `img`, then `img` upside down, as a camera stores a second
    view), HEIC (with a 160-pixel embedded thumbnail, as iPhones write) or AVIF."""
    out = io.BytesIO()
    if fmt == "MPO":
        img.save(out, "MPO", save_all=True, append_images=[img.transpose(Image.Transpose.ROTATE_180)],
                 quality=quality)
    elif fmt == "HEIC":
        img.save(out, "HEIF", quality=quality, thumbnails=[160])
    else:
        img.save(out, fmt, quality=quality)
    return out.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks in order, each as (type, its whole bytes: length, type, data, CRC)."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos:end]))
        pos = end
    return out


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk of type `kind` holding `payload`, with its CRC."""
    import zlib

    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def png_after_pixels(data: bytes, *extra: bytes, moved: tuple[bytes, ...] = (b"eXIf",)) -> bytes:
    """The PNG `data` with its chunks of the `moved` types, and the chunks `extra` (png_chunk's), after its
    pixels (its last IDAT), where many tools write EXIF and text, and Pillow reads them only as it decodes."""
    chunks = png_chunks(data)
    kinds = [k for k, _ in chunks]
    last = len(kinds) - kinds[::-1].index(b"IDAT")
    kept = [c for k, c in chunks[:last] if k not in moved]
    late = [c for k, c in chunks[:last] if k in moved] + list(extra)
    return data[:8] + b"".join(kept + late + [c for _, c in chunks[last:]])


def png_with_broken_pixels(data: bytes) -> bytes:
    """The PNG `data` with its pixels (IDAT) replaced by bytes no decoder reads, every other chunk as it was."""
    return data[:8] + b"".join(png_chunk(b"IDAT", b"\x00" * (len(c) - 12)) if k == b"IDAT" else c
                               for k, c in png_chunks(data))
