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
