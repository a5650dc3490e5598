"""The Embedder: any PIL image in, unit-length float32 vectors out, deterministically."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import model


@pytest.fixture(scope="module")
def embedder(hybrid1_artifact):
    return model.Embedder.from_file(hybrid1_artifact, device="cpu", batch_size=4)


def _photo(w=640, h=480, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


MODES = ["L", "RGB", "RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr", "I;16", "I", "F", "HSV", "LAB"]


@pytest.mark.parametrize("mode", MODES)
def test_any_mode_gives_one_unit_vector(embedder, mode):
    img = _photo(97, 61).convert(mode) if mode not in ("I;16", "I", "F", "PA", "HSV", "LAB") else None
    if img is None:
        grey = np.asarray(_photo(97, 61).convert("L"))
        if mode == "I;16":
            img = Image.fromarray(grey.astype(np.uint16) * 257)
        elif mode == "I":
            img = Image.fromarray(grey.astype(np.int32) * 257)
        elif mode == "F":
            img = Image.fromarray(grey.astype(np.float32) / 255.0)
        elif mode == "PA":
            img = _photo(97, 61).convert("RGBA").convert("PA")
        else:
            img = _photo(97, 61).convert(mode)
    assert img.mode == mode
    out = embedder.embed([img])
    assert out.shape == (1, 256) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-5


def test_sixteen_bit_grey_is_scaled_not_clipped(embedder):
    grey = np.asarray(_photo(64, 64).convert("L"))
    eight = embedder.embed([Image.fromarray(grey)])
    sixteen = embedder.embed([Image.fromarray(grey.astype(np.uint16) * 257)])
    np.testing.assert_allclose(eight, sixteen, atol=1e-6)


def test_transparent_pixels_are_flattened_onto_white(embedder):
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    np.testing.assert_allclose(embedder.embed([clear]), embedder.embed([white]), atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_large_transparent_image_shrunk_before_flattening_is_the_one_flattened_first(mode):
    """Flattening touches the small picture (an 8000x8000 PNG costs it 1.5 s at full size), and the pixels
    are those of flattening onto white at full size, then resizing, to rounding (8-bit premultiplied alpha)."""
    rng = np.random.default_rng(5)

    def blocks(*shape):   # 30 x 41 blocks of 10 x 10 pixels: a picture with something in it at 32 x 32
        return np.kron(rng.integers(0, shape[-1] if mode == "P" else 256, (30, 41) + shape[:-1]),
                       np.ones((10, 10) + (1,) * (len(shape) - 1), dtype=np.int64)).astype(np.uint8)

    if mode == "P":
        image = Image.fromarray(blocks(4), "P")
        image.putpalette([200, 30, 30, 30, 200, 30, 30, 30, 200, 9, 9, 9])
        image.info["transparency"] = 3
    else:
        pixels = blocks(len(mode), 256)
        pixels[..., -1] = np.where(pixels[..., -1] < 100, 0, pixels[..., -1])
        image = Image.fromarray(pixels, mode)
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    for chans, target in ((3, "RGB"), (1, "L")):
        first = model.to_model_array(flat.convert(target), chans, 32).astype(int)
        got = model.to_model_array(image, chans, 32).astype(int)
        assert np.abs(got - first).max() <= 3 and np.abs(got - first).mean() < 1 and got.std() > 10


def test_same_image_gives_the_same_vector_alone_or_in_a_batch(embedder):
    images = [_photo(seed=i) for i in range(9)]  # more than one batch of 4
    together = embedder.embed(images)
    for i in (0, 4, 8):
        np.testing.assert_allclose(embedder.embed([images[i]])[0], together[i], atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(images), together)


def test_different_images_give_different_vectors(embedder):
    a, b = embedder.embed([_photo(seed=1), _photo(seed=2)])
    assert float(a @ b) < 0.99999


def test_exif_orientation_is_applied(embedder):
    upright = _photo(60, 40, seed=3)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, exif=exif)
    stored = Image.open(io.BytesIO(buf.getvalue()))
    buf2 = io.BytesIO()
    upright.save(buf2, "JPEG", quality=95)
    plain = Image.open(io.BytesIO(buf2.getvalue()))
    a, b = embedder.embed([stored, plain])
    assert float(a @ b) > 0.99


def test_preprocess_resizes_short_side_and_centre_crops(embedder):
    arr = embedder.preprocess(_photo(640, 480))
    assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8


def test_empty_list_gives_an_empty_matrix(embedder):
    assert embedder.embed([]).shape == (0, 256)


def test_grey_model_accepts_colour_photos(tmp_path):
    meta = model.ArtifactMeta(name="g", arch="hybrid1", in_chans=1, image_size=28, mean=[0.13], std=[0.31])
    path = model.save_artifact(tmp_path / "g.safetensors", model.create_model("hybrid1", in_chans=1), meta)
    out = model.Embedder.from_file(path, device="cpu").embed([_photo(), _photo().convert("L")])
    assert out.shape == (2, 256)
    np.testing.assert_allclose(out[0], out[1], atol=1e-2)


def _tta_artifact(tmp_path, tta):
    torch.manual_seed(0)
    meta = model.ArtifactMeta(name=f"t-{tta}", arch="hybrid1", in_chans=3, image_size=32, tta=tta)
    return model.save_artifact(tmp_path / f"{tta}.safetensors", model.create_model("hybrid1", in_chans=3), meta)


def test_hflip_tta_embeds_an_image_and_its_mirror_alike(tmp_path):
    img = _photo(32, 32, seed=3)  # the model's size: no resize or crop that could break the symmetry
    mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    plain = model.Embedder.from_file(_tta_artifact(tmp_path, "none"), device="cpu").embed([img, mirror])
    flipped = model.Embedder.from_file(_tta_artifact(tmp_path, "hflip"), device="cpu").embed([img, mirror])
    # the untrained net is nearly, not exactly, mirror-symmetric; its hflip embedding is exactly (to rounding)
    assert np.abs(flipped[0] - flipped[1]).max() < np.abs(plain[0] - plain[1]).max() / 100
    np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-5)


def test_hflip_tta_is_the_normalised_mean_of_the_image_and_mirror_embeddings(tmp_path):
    emb = model.Embedder.from_file(_tta_artifact(tmp_path, "hflip"), device="cpu")
    arr = np.stack([emb.preprocess(_photo(seed=s)) for s in range(3)])
    x = (torch.from_numpy(arr).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        want = torch.nn.functional.normalize((emb.model(x) + emb.model(x.flip(3))) / 2, dim=1).numpy()
    np.testing.assert_allclose(emb.embed_arrays(arr), want, atol=1e-5)


def test_unknown_tta_is_refused_naming_it():
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot90'"):
        model.embed_tensor(model.create_model("hybrid1"), torch.zeros(1, 3, 32, 32), "rot90")
    with pytest.raises(ValueError, match="tta"):
        model.ArtifactMeta(name="x", arch="hybrid1", tta="rot90")


def test_traced_graph_gives_the_eager_embeddings(hybrid1_artifact):
    traced = model.Embedder.from_file(hybrid1_artifact, device="cpu", batch_size=4)
    eager = model.Embedder.from_file(hybrid1_artifact, device="cpu", batch_size=4, trace=False)
    assert traced.traced and not eager.traced
    arrays = np.random.default_rng(3).integers(0, 256, (9, 3, 32, 32), dtype=np.uint8)
    for n in (1, 4, 9):  # one image, one full batch, two batches and a remainder
        np.testing.assert_allclose(traced.embed_arrays(arrays[:n]), eager.embed_arrays(arrays[:n]), atol=1e-6)


class _ShapeBranching(torch.nn.Module):
    """A network whose forward takes a Python branch on the batch size: a trace records only one."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 32)
        self.b = torch.nn.Conv2d(3, 8, 32)

    def forward(self, x):
        return (self.a(x) if x.shape[0] % 2 == 0 else self.b(x)).flatten(1)


def test_network_that_does_not_trace_faithfully_stays_eager():
    torch.manual_seed(0)
    meta = model.ArtifactMeta(name="branching", arch="hybrid1", embed_dim=8)
    embedder = model.Embedder(model.Artifact(meta, _ShapeBranching(), {}, "0" * 64), device="cpu")
    assert not embedder.traced
    net = embedder.model
    arrays = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    x = (torch.from_numpy(arrays).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.b(x).flatten(1), dim=1).numpy()
    np.testing.assert_allclose(embedder.embed_arrays(arrays), expected, atol=1e-5)
