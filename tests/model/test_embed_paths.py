"""Embedder.embed given file paths opens them as `simsearch index build` and the service open files
(model.open_image): with the same checks (a JPEG of thousands of scans is refused before it is decoded, where
Pillow's own Image.open took minutes over it) and the same pixels, so the same vectors, bit for bit."""
from __future__ import annotations

import io
import logging
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import model
from cli._index import _decode
from model._preprocess import MAX_JPEG_SCANS

from ..photo_formats import cifar_pictures, decode_once_files, many_scan_jpeg, untrained_hybrid1

DAMAGED_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"   # its first IFD 2 GB past the end, as editors write them


@pytest.fixture(scope="module")
def embedder() -> model.Embedder:
    return model.Embedder.from_file(model.default_artifact_path(), device="cpu")


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory) -> list:
    """Real CIFAR-10 JPEGs, and photos made of them in every format read (tests/photo_formats.py), as files."""
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for name, data in decode_once_files(cifar_pictures(shared_data)).items():
        out.append(folder / name.replace("/", "-"))
        out[-1].write_bytes(data)
    return out


def test_a_path_to_a_jpeg_of_thousands_of_scans_is_refused_naming_it_before_it_is_decoded(tmp_path, files, embedder):
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(many_scan_jpeg(4000, 4000, 20_000))   # 180 KB; some 25 s for Pillow to decode
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"scans\.jpg: cannot read it as an image \(JpegScanBomb: a JPEG of more "
                                         f"than {MAX_JPEG_SCANS} scans is refused"):
        embedder.embed([files[0], bomb])
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("in_chans", [3, 1])
def test_paths_give_the_vectors_index_build_gives_their_files_bit_for_bit(files, embedder, in_chans, tmp_path):
    if in_chans == 1:   # a grey model: its draft for the model in mode L
        embedder = model.Embedder.from_file(untrained_hybrid1(tmp_path, 1), device="cpu")
    got = embedder.embed(files)
    built = embedder.embed_arrays(np.stack([_decode(f.read_bytes(), embedder, 128)[0] for f in files]))
    np.testing.assert_array_equal(got, built)
    before = []   # as embed opened a path before (Image.open): ordinary files keep their vectors
    for f in files:
        with Image.open(f) as im:
            before.append(embedder.preprocess(im, owned=True))
    np.testing.assert_array_equal(got, embedder.embed_arrays(np.stack(before)))


def test_a_path_with_damaged_exif_is_embedded_and_named_in_one_log_line(tmp_path, embedder, caplog):
    path = tmp_path / "damaged.jpg"
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(out, "JPEG", exif=DAMAGED_EXIF)
    path.write_bytes(out.getvalue())
    with caplog.at_level(logging.WARNING, logger="simsearch.images"), warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw UserWarning would raise here
        assert embedder.embed([path]).shape == (1, 256)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: its EXIF data is damaged (Corrupt EXIF data. Expecting to read 2 bytes but only got 0.); it is "
        "used without EXIF orientation"]


def test_an_empty_file_is_named_as_empty(tmp_path, embedder):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png: cannot read it as an image \(UnidentifiedImageError: empty "
                                         r"file \(0 bytes\)\)"):
        embedder.embed([tmp_path / "empty.png"])


class _Watched(model.Embedder):
    """An Embedder that notes how many items a generator had handed out each time a batch was embedded."""

    pulled = 0

    def embed_arrays(self, batch):
        self.calls.append((self.pulled, len(batch)))
        return super().embed_arrays(batch)


def _counted(watched: _Watched, items: list):
    for item in items:
        watched.pulled += 1
        yield item


def test_a_generator_is_embedded_a_batch_at_a_time_as_it_is_read_with_the_vectors_of_the_whole_list(files):
    art = model.load_artifact(model.default_artifact_path(), device="cpu")
    watched, whole = _Watched(art, "cpu", batch_size=4), model.Embedder(art, "cpu", batch_size=4)
    watched.calls = []
    paths = (files * 2)[:10]
    got = watched.embed(_counted(watched, paths))
    # each batch embedded once its 4 items were read, not after the whole generator (every decoded item held)
    assert watched.calls == [(4, 4), (8, 4), (10, 2)]
    np.testing.assert_array_equal(got, whole.embed(paths))   # the whole list at once, as before: the same vectors
    watched.calls = []
    np.testing.assert_array_equal(watched.embed(_counted(watched, [Image.open(f) for f in paths])), got)
    with pytest.raises(TypeError, match="item 5 is a int"):   # the item named by its place in the whole stream
        watched.embed(_counted(watched, [*paths[:5], 7, *paths[5:]]))
    with pytest.raises(ValueError, match=r"-broken\.png: cannot read it as an image"):
        broken = files[0].with_name("x-broken.png")
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        watched.embed(iter([*paths[:6], broken]))
    with pytest.raises(TypeError, match="embed takes a list of PIL images or file paths, got a int"):
        watched.embed(7)
    assert watched.embed(iter([])).shape == (0, 256)
