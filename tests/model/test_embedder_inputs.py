"""What Embedder.embed and Embedder.embed_arrays take, alike on the torch and onnx runtimes: PIL images or
file paths; uint8 pixel arrays of the model's shape. Anything else is refused with a message naming it."""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model

RUNTIMES = ["torch", "onnx"]


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory) -> list[Path]:
    """Six real CIFAR-10 test JPEGs, as files."""
    folder = tmp_path_factory.mktemp("cifar")
    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.split("/")[1:2] == ["test"]:
                out.append(folder / f"{len(out)}.jpg")
                out[-1].write_bytes(tar.extractfile(m).read())
            if len(out) == 6:
                break
    return out


@pytest.fixture(scope="module", params=RUNTIMES)
def embedder(request) -> model.Embedder:
    return model.Embedder.from_file(model.default_artifact_path(), device="cpu", runtime=request.param)


@pytest.fixture(scope="module")
def pixels(files, embedder) -> np.ndarray:
    return np.stack([embedder.preprocess(Image.open(f)) for f in files])


def test_paths_and_pil_images_give_the_same_vectors(files, embedder):
    from_images = embedder.embed([Image.open(f) for f in files])
    np.testing.assert_array_equal(embedder.embed([str(f) for f in files]), from_images)
    np.testing.assert_array_equal(embedder.embed(files), from_images)          # pathlib.Path
    np.testing.assert_array_equal(embedder.embed(iter(files)), from_images)    # any iterable
    mixed = embedder.embed([files[0], Image.open(files[1])])
    np.testing.assert_array_equal(mixed, embedder.embed([Image.open(f) for f in files[:2]]))


@pytest.mark.parametrize("single", ["path", "str", "image"])
def test_one_image_or_path_alone_is_refused_saying_to_put_it_in_a_list(files, embedder, single):
    value = {"path": files[0], "str": str(files[0]), "image": Image.open(files[0])}[single]
    with pytest.raises(TypeError, match=r"got one .*embed\(\[image\]\)"):
        embedder.embed(value)


def test_arrays_and_tensors_given_to_embed_are_sent_to_embed_arrays(embedder, pixels):
    for value in (pixels, torch.from_numpy(pixels)):
        with pytest.raises(TypeError, match=r"of shape \(6, 3, 32, 32\).* go to embed_arrays"):
            embedder.embed(value)
    with pytest.raises(TypeError, match=r"item 1 is a numpy.ndarray of shape \(3, 32, 32\).*embed_arrays"):
        embedder.embed([Image.new("RGB", (8, 8)), pixels[0]])
    with pytest.raises(TypeError, match="item 0 is a int"):
        embedder.embed([3])


def test_a_file_that_is_not_an_image_is_named(tmp_path, files, embedder):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match=r"notes\.jpg: cannot read it as an image"):
        embedder.embed([files[0], tmp_path / "notes.jpg"])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        embedder.embed([tmp_path / "missing.jpg"])


def test_empty_inputs_give_an_empty_matrix_on_either_runtime(embedder):
    assert embedder.embed([]).shape == (0, 256)
    assert embedder.embed(x for x in []).shape == (0, 256)
    assert embedder.embed_arrays(np.zeros((0, 3, 32, 32), np.uint8)).shape == (0, 256)


def test_integer_arrays_within_the_pixel_range_are_taken_as_uint8(embedder, pixels):
    np.testing.assert_array_equal(embedder.embed_arrays(pixels.astype(np.int64)), embedder.embed_arrays(pixels))
    np.testing.assert_array_equal(embedder.embed_arrays(torch.from_numpy(pixels)), embedder.embed_arrays(pixels))


@pytest.mark.parametrize("case, message", [
    ("float01", r"dtype float32, expected uint8 \(N, 3, 32, 32\).*\* 255"),
    ("float255", r"dtype float64, expected uint8"),
    ("uint16", r"uint16 values from 0 to 6[0-9]+, expected pixels 0..255"),
    ("negative", r"int64 values from -1 to"),
    ("channels_last", r"shape \(6, 32, 32, 3\).*transpose\(0, 3, 1, 2\)"),
    ("one_image", r"shape \(3, 32, 32\).*array\[None\]"),
    ("other_size", r"shape \(6, 3, 64, 64\), expected uint8 \(N, 3, 32, 32\).*preprocess"),
    ("grey", r"shape \(6, 1, 32, 32\)"),
])
def test_arrays_of_another_dtype_range_or_shape_are_refused_naming_it(embedder, pixels, case, message):
    bad = {"float01": lambda: (pixels / 255).astype(np.float32), "float255": lambda: pixels.astype(np.float64),
           "uint16": lambda: pixels.astype(np.uint16) * 257, "negative": lambda: pixels.astype(np.int64) - 1,
           "channels_last": lambda: pixels.transpose(0, 2, 3, 1), "one_image": lambda: pixels[0],
           "other_size": lambda: pixels.repeat(2, axis=2).repeat(2, axis=3), "grey": lambda: pixels[:, :1]}[case]()
    with pytest.raises(ValueError, match=message):
        embedder.embed_arrays(bad)


def test_a_list_given_to_embed_arrays_is_sent_to_embed(embedder, files):
    with pytest.raises(TypeError, match="PIL images and file paths go to embed"):
        embedder.embed_arrays([Image.open(files[0])])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8"])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused_at_once(batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size!r}"):
        model.Embedder.from_file(model.default_artifact_path(), device="cpu", batch_size=batch_size)


def test_a_region_given_as_text_is_read_as_parse_crop_reads_it(files):
    embedder = model.Embedder.from_file(model.default_artifact_path(), device="cpu")
    im = Image.open(files[0])
    np.testing.assert_array_equal(embedder.preprocess(im, crop="0.1,0.2,0.6,0.9"),
                                  embedder.preprocess(im, crop=(0.1, 0.2, 0.6, 0.9)))
    with pytest.raises(ValueError, match=r"crop=\(0.1, 0.2\) has 2 values"):
        embedder.preprocess(im, crop=(0.1, 0.2))
