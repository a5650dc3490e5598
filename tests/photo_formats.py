"""One picture as the files phones and cameras write, for the tests of every layer that reads them."""
from __future__ import annotations

import io
import struct

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


# What the tests of decoding once share: tests/app/test_index_decode_once.py (POST /index) and
# tests/cli/test_build_decode_once.py (`simsearch index build`).

CIFAR_PICTURES = ("cat/0000", "ship/0001", "dog/0002", "automobile/0003")


def cifar_pictures(shared_data, names: tuple[str, ...] = CIFAR_PICTURES) -> list[tuple[Image.Image, bytes]]:
    """Real CIFAR-10 (JPEG) test pictures of the shared tar, each as (the picture in RGB, its file)."""
    import tarfile

    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for name in names:
            data = tar.extractfile(f"cifar10-jpeg/test/{name}.jpg").read()
            out.append((Image.open(io.BytesIO(data)).convert("RGB"), data))
    return out


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    """`img` saved in `fmt` with Pillow's `options`."""
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def camera_exif(orientation: int) -> Image.Exif:
    """EXIF as a camera writes it: an orientation, the camera, a time and a GPS fix."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110], exif[0x0132] = "Canon", "Canon EOS R5", "2024:06:01 14:03:22"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return exif


def decode_once_files(pictures: list[tuple[Image.Image, bytes]]) -> dict[str, bytes]:
    """Files made of four cifar_pictures, by kind/name: CIFAR's own JPEGs and a 12 MP one (each decoded once, at
    1/1 and 1/8), photos of 640x480 as JPEG (decoded at two scales) and as PNG, WebP, GIF and BMP (decoded once),
    upright or turned by EXIF (camera_exif), CMYK and greyscale JPEGs, an MPO, a HEIC where this Pillow reads one."""
    import model

    (pic, data), (_, data2), (pic3, _), (pic4, _) = pictures
    photo, small = phone_sized(pic3), pic4.resize((60, 45))
    large = pic.resize((4032, 3024), Image.Resampling.BICUBIC)   # a phone's 12 MP
    files = {
        "cifar/cat.jpg": data, "cifar/ship.jpg": data2,
        "jpeg/photo.jpg": encoded(photo, "JPEG", quality=90),
        "jpeg/large.jpg": encoded(large, "JPEG", quality=90),
        "jpeg/large_turned.jpg": encoded(large, "JPEG", quality=90, exif=camera_exif(6)),
        "jpeg/turned.jpg": encoded(photo, "JPEG", quality=90, exif=camera_exif(6)),
        "jpeg/small_turned.jpg": encoded(small, "JPEG", quality=90, exif=camera_exif(8)),
        "jpeg/cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "jpeg/grey_small.jpg": encoded(small.convert("L"), "JPEG"),
        "jpeg/camera.mpo": encode_as(photo, "MPO"),
        "whole/photo.png": encoded(photo, "PNG"),
        "whole/turned.png": encoded(photo, "PNG", exif=camera_exif(6)),
        "whole/alpha.png": encoded(photo.convert("RGBA"), "PNG"),
        "whole/photo.webp": encoded(photo, "WEBP", quality=90),
        "whole/photo.gif": encoded(photo.convert("P"), "GIF"),
        "whole/photo.bmp": encoded(small, "BMP"),
    }
    if model.HEIF_READABLE:
        files["phone/photo.heic"] = encode_as(photo, "HEIC")
    return files


def untrained_hybrid1(folder, in_chans: int):
    """The path of a Hybrid-1 artifact of `in_chans` channels (1: its draft for the model is in mode L, the
    thumbnail's in RGB), seeded, saved in `folder`."""
    import torch

    import model

    torch.manual_seed(0)
    meta = model.ArtifactMeta(name=f"hybrid1-c{in_chans}", arch="hybrid1", in_chans=in_chans, image_size=32,
                              class_names=[f"c{i}" for i in range(10)], mean=[0.5] * in_chans, std=[0.5] * in_chans)
    return model.save_artifact(folder / f"c{in_chans}.safetensors", model.create_model("hybrid1", in_chans=in_chans),
                               meta)


def counted_decodes(monkeypatch) -> dict[tuple[str, tuple[int, int]], int]:
    """Every decoding Pillow does from now on (the real decoder runs), counted by (format, size) in the dict
    returned, from any thread."""
    import threading

    from PIL import ImageFile

    decoded: dict[tuple[str, tuple[int, int]], int] = {}
    lock, real_load = threading.Lock(), ImageFile.ImageFile.load

    def counted_load(self):
        if self.tile:   # pixels still to decode (a loaded image has none)
            with lock:
                key = (self.format, self.size)
                decoded[key] = decoded.get(key, 0) + 1
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    return decoded


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment: FF, the marker, its length, `payload`."""
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def many_scan_jpeg(width: int, height: int, scans: int) -> bytes:
    """A progressive grey JPEG whose AC scans are their 10-byte headers alone (libjpeg pads the missing data and
    walks every block of the image for each): helper H's craft_jpeg_scans.py, mode 'empty'."""
    out = bytearray(b"\xff\xd8")
    out += jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
    out += jpeg_segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))
    out += jpeg_segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    out += jpeg_segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\xe0")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    out += jpeg_segment(0xDA, bytes([1, 1, 0x00, 0, 0, 0])) + b"\x00" * ((blocks + 7) // 8)   # DC scan
    for _ in range(scans):
        out += jpeg_segment(0xDA, bytes([1, 1, 0x00, 1, 63, 0x00]))
    return bytes(out + b"\xff\xd9")
