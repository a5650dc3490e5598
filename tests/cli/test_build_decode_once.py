"""`simsearch index build` decodes an image once where one decoding gives its vector, thumbnail and metadata (a
PNG, WebP, GIF or BMP; a JPEG whose draft for the model and for the thumbnail come out at the same scale and
mode), and what it stores is still what decoding for each gives: the vector model.Embedder gives the file,
the thumbnail the service makes of it, its size as displayed and its EXIF; a file that does not decode is
named and skipped as before."""
from __future__ import annotations

import io
import itertools
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import model
from cli import main
from index import Store, StoreConfig

from ..photo_formats import encode_as, phone_sized

THUMB = 128   # `index build`'s default thumbnail size


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _exif(orientation: int) -> Image.Exif:
    """EXIF with an orientation, a camera, a time and a GPS fix."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110], exif[0x0132] = "Canon", "Canon EOS R5", "2024:06:01 14:03:22"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return exif


@pytest.fixture(scope="module")
def cifar_pictures(shared_data) -> list[Image.Image]:
    """Four real CIFAR-10 (JPEG) test pictures, and their files."""
    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for name in ("cat/0000", "ship/0001", "dog/0002", "automobile/0003"):
            data = tar.extractfile(f"cifar10-jpeg/test/{name}.jpg").read()
            out.append((Image.open(io.BytesIO(data)).convert("RGB"), data))
    return out


@pytest.fixture
def images(cifar_pictures, tmp_path) -> Path:
    """A folder of the files a gallery is built from: CIFAR's own JPEGs and a 12 MP one (each decoded once, at
    1/1 and 1/8), photos of 640x480 as JPEG (decoded at two scales) and as PNG, WebP, GIF and BMP (decoded once),
    upright or turned by EXIF, CMYK and greyscale JPEGs, an MPO; and in bad/ files that do not decode."""
    root = tmp_path / "images"
    (pic, data), (pic2, data2), (pic3, _), (pic4, _) = cifar_pictures
    photo, small = phone_sized(pic3), pic4.resize((60, 45))
    large = pic.resize((4032, 3024), Image.Resampling.BICUBIC)   # a phone's 12 MP
    files = {
        "cifar/cat.jpg": data, "cifar/ship.jpg": data2,
        "jpeg/photo.jpg": _encoded(photo, "JPEG", quality=90),
        "jpeg/large.jpg": _encoded(large, "JPEG", quality=90),
        "jpeg/turned.jpg": _encoded(photo, "JPEG", quality=90, exif=_exif(6)),
        "jpeg/small_turned.jpg": _encoded(small, "JPEG", quality=90, exif=_exif(8)),
        "jpeg/cmyk.jpg": _encoded(photo.convert("CMYK"), "JPEG"),
        "jpeg/grey_small.jpg": _encoded(small.convert("L"), "JPEG"),
        "jpeg/camera.mpo": encode_as(photo, "MPO"),
        "whole/photo.png": _encoded(photo, "PNG"),
        "whole/turned.png": _encoded(photo, "PNG", exif=_exif(6)),
        "whole/alpha.png": _encoded(photo.convert("RGBA"), "PNG"),
        "whole/photo.webp": _encoded(photo, "WEBP", quality=90),
        "whole/photo.gif": _encoded(photo.convert("P"), "GIF"),
        "whole/photo.bmp": _encoded(small, "BMP"),
        "bad/cut.jpg": _encoded(photo, "JPEG", quality=90)[:3000],
        "bad/cut.png": _encoded(photo, "PNG")[:5000],
        "bad/text.jpg": b"not an image at all",
        "bad/empty.png": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _artifact(tmp_path: Path, in_chans: int) -> Path:
    import torch

    torch.manual_seed(0)
    meta = model.ArtifactMeta(name=f"hybrid1-c{in_chans}", arch="hybrid1", in_chans=in_chans, image_size=32,
                              class_names=[f"c{i}" for i in range(10)], mean=[0.5] * in_chans, std=[0.5] * in_chans)
    return model.save_artifact(tmp_path / f"c{in_chans}.safetensors", model.create_model("hybrid1", in_chans=in_chans),
                               meta)


def _service_thumbnail(path: Path) -> bytes:
    """The thumbnail the service stores for a file (app/_embedding.py): a JPEG or MPO decoded at the thumbnail's
    own draft scale, anything else decoded whole."""
    with Image.open(path) as im:
        if im.format in model.DRAFT_FORMATS:
            im.draft(None, (THUMB, THUMB))
        return model.make_thumbnail(im, THUMB)


@pytest.mark.parametrize("in_chans", [3, 1], ids=["rgb-model", "grey-model"])
def test_build_stores_the_vector_thumbnail_and_metadata_each_decoding_on_its_own_gives(images, tmp_path, capsys,
                                                                                       in_chans):
    artifact = _artifact(tmp_path, in_chans)
    data = tmp_path / "data"
    assert main(["index", "build", str(images), "--model", str(artifact), "--data", str(data), "--exif", "--gps",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "indexed 15 images (4 skipped)" in out
    # the files that do not decode, each named with why, as before
    assert "skipped bad/cut.jpg: OSError: image file is truncated (" in out
    assert "skipped bad/cut.png: OSError: image file is truncated\n" in out
    assert "skipped bad/text.jpg: UnidentifiedImageError: not an image Pillow can read (19 bytes)" in out
    assert "skipped bad/empty.png: UnidentifiedImageError: empty file (0 bytes)" in out
    embedder = model.Embedder.from_file(artifact, device="cpu")
    good = sorted(p for p in images.rglob("*") if p.is_file() and p.parent.name != "bad")
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.count() == len(good) == 15
        for path in good:
            id_ = path.relative_to(images).as_posix()
            item = store.get(id_)
            # the vector the embedder gives the file from its own draft for the model (float rounding apart: a
            # JPEG decoded at another scale is off by 1e-3 and more)
            assert np.abs(item.vector - embedder.embed([path])[0]).max() < 1e-6, id_
            assert store.thumbnail(id_) == _service_thumbnail(path), id_
            with Image.open(path) as im:
                assert (item.metadata["width"], item.metadata["height"]) == model.displayed_size(im), id_
            if "turned" in id_:
                assert {k: item.metadata[k] for k in ("taken", "camera", "lat", "lon")} == {
                    "taken": "2024-06-01T14:03:22", "camera": "Canon EOS R5", "lat": 48.858333, "lon": 2.294444}, id_
    # a picture turned by EXIF is stored upright: width and height as displayed
    assert Image.open(io.BytesIO(_thumbnail(data, "jpeg/turned.jpg"))).size == (96, 128)


def _thumbnail(data: Path, id_: str) -> bytes:
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        return store.thumbnail(id_)


def test_build_decodes_a_png_or_a_small_jpeg_once_and_a_photo_jpeg_at_the_models_and_the_thumbnails_scale(
        images, hybrid1_artifact, tmp_path, capsys, monkeypatch):
    # every decoding Pillow does, counted by image (the real decoder runs)
    decoded: dict[tuple[str, tuple[int, int]], int] = {}
    lock, real_load = threading.Lock(), ImageFile.ImageFile.load

    def counted_load(self):
        if self.tile:   # pixels still to decode (a loaded image has none)
            with lock:
                key = (self.format, self.size)
                decoded[key] = decoded.get(key, 0) + 1
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    folder = tmp_path / "some"
    for name in ("cifar/cat.jpg", "cifar/ship.jpg", "jpeg/photo.jpg", "jpeg/large.jpg", "jpeg/small_turned.jpg",
                 "whole/photo.png", "whole/photo.webp", "whole/photo.gif"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((images / name).read_bytes())
    for thumbnails in (["--thumbnail-size", str(THUMB)], ["--no-thumbnails"]):
        decoded.clear()
        assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), "--data",
                     str(tmp_path / f"data{thumbnails[0]}"), "--workers", "1", *thumbnails]) == 0
        assert "indexed 8 images (0 skipped)" in capsys.readouterr().out
        counts = dict(sorted(decoded.items(), key=lambda kv: (kv[0][0], kv[0][1])))
        # CIFAR's 32x32 JPEGs and the 60x45 one: once, both drafts being the whole picture; the 12 MP one once,
        # both drafts at 1/8; a PNG, WebP or GIF once (its EXIF, after the pixels in a PNG, read from that
        # decoding); a 640x480 JPEG at 80x60 for the model and, with thumbnails, at 320x240 for them
        expected = {("JPEG", (32, 32)): 2, ("JPEG", (60, 45)): 1, ("JPEG", (504, 378)): 1, ("JPEG", (80, 60)): 1,
                    ("PNG", (640, 480)): 1, ("WEBP", (640, 480)): 1, ("GIF", (640, 480)): 1}
        if thumbnails[0] != "--no-thumbnails":
            expected["JPEG", (320, 240)] = 1
        assert counts == dict(sorted(expected.items())), thumbnails
        assert sum(counts.values()) == len(list(itertools.chain(folder.rglob("*.*")))) + (
            1 if thumbnails[0] != "--no-thumbnails" else 0)
