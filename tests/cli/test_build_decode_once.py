"""`simsearch index build` decodes an image once where one decoding gives its vector, thumbnail and metadata (a
PNG, WebP, GIF or BMP; a JPEG whose draft for the model and for the thumbnail come out at the same scale and
mode), and what it stores is still what decoding for each gives: the vector model.Embedder gives the file,
the thumbnail the service makes of it, its size as displayed and its EXIF; a file that does not decode is
named and skipped as before."""
from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model
from cli import main
from index import Store, StoreConfig

from ..photo_formats import cifar_pictures, counted_decodes, decode_once_files, untrained_hybrid1

THUMB = 128   # `index build`'s default thumbnail size


@pytest.fixture(scope="module")
def files(shared_data) -> dict[str, bytes]:
    """The files of photo_formats.decode_once_files, by path, and in bad/ files that do not decode."""
    files = decode_once_files(cifar_pictures(shared_data))
    return {**files, "bad/cut.jpg": files["jpeg/photo.jpg"][:3000], "bad/cut.png": files["whole/photo.png"][:5000],
            "bad/text.jpg": b"not an image at all", "bad/empty.png": b""}


@pytest.fixture
def images(files, tmp_path) -> Path:
    """A folder of the files a gallery is built from (`files`)."""
    root = tmp_path / "images"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


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
    artifact = untrained_hybrid1(tmp_path, in_chans)
    data = tmp_path / "data"
    assert main(["index", "build", str(images), "--model", str(artifact), "--data", str(data), "--exif", "--gps",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    good = sorted(p for p in images.rglob("*") if p.is_file() and p.parent.name != "bad")
    assert f"indexed {len(good)} images (4 skipped)" in out
    # the files that do not decode, each named with why, as before
    assert "skipped bad/cut.jpg: OSError: image file is truncated (" in out
    assert "skipped bad/cut.png: OSError: image file is truncated\n" in out
    assert "skipped bad/text.jpg: UnidentifiedImageError: not an image Pillow can read (19 bytes)" in out
    assert "skipped bad/empty.png: UnidentifiedImageError: empty file (0 bytes)" in out
    embedder = model.Embedder.from_file(artifact, device="cpu")
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert store.count() == len(good) == 16 + model.HEIF_READABLE
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
    decoded = counted_decodes(monkeypatch)
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
