"""Strip-shaped images (1 x 1,000,000 pixels: a 3 KB PNG) are embedded in little memory and time: the model's
input is made from the window its centre crop keeps, never from the whole image enlarged first (which was
32 x 32,000,000 pixels, gigabytes, for a 32-pixel model)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model
from model._preprocess import _fit

REPO = Path(__file__).resolve().parents[2]


def _png(size: tuple[int, int], colour=(200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


# Run in a child process, so that its peak resident memory is its own: the embedder is loaded and a first
# image embedded, the peak reset (/proc/self/clear_refs), and then each strip embedded from its PNG's bytes.
# The address space is capped 1 GiB above what it is after loading, so that a regression fails with a
# MemoryError rather than taking gigabytes of the machine the tests run on.
_CHILD = textwrap.dedent("""
    import io, json, resource, sys
    import numpy as np
    from PIL import Image
    import model

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))   # kB

    embedder = model.Embedder.from_file(model.default_artifact_path(), device="cpu")
    colour = tuple(json.loads(sys.argv[1]))
    square = embedder.embed([Image.new("RGB", (32, 32), colour)])
    cap = (status("VmSize") + 1024 * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = {}
    for w, h in json.loads(sys.argv[2]):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), colour).save(buf, "PNG")
        data = buf.getvalue()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # the peak resident size (VmHWM) starts again from the present
        before = status("VmRSS")
        try:
            vec = embedder.embed([Image.open(io.BytesIO(data))])
        except MemoryError:
            out[f"{w}x{h}"] = {"error": "MemoryError"}
            continue
        out[f"{w}x{h}"] = {"png_bytes": len(data), "peak_growth_kb": status("VmHWM") - before,
                           "cos_to_square": float(vec[0] @ square[0])}
    print(json.dumps(out))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_strip_png_of_a_million_pixels_one_way_embeds_in_little_memory():
    colour = [200, 40, 90]
    shapes = [[1, 1_000_000], [1_000_000, 1], [3, 400_000]]
    run = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(colour), json.dumps(shapes)], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for (w, h) in shapes:
        one = got[f"{w}x{h}"]
        assert "error" not in one, f"{w}x{h}: {one}"
        assert one["png_bytes"] < 20_000   # what an upload of it costs
        # decoding the strip itself is 3 bytes a pixel (~3-4 MB here); enlarging it whole was gigabytes
        assert one["peak_growth_kb"] < 64 * 1024, f"{w}x{h}: peak resident memory grew {one['peak_growth_kb']} kB"
        # a strip of one colour is that colour in the model's window: the vector of a square of it
        assert one["cos_to_square"] > 0.9999, f"{w}x{h}: {one}"


@pytest.mark.parametrize("shape", [(8, 600), (600, 8), (5, 2000), (3000, 40)])
def test_an_image_longer_than_64_times_its_width_gets_the_pixels_of_the_whole_resize_within_one_level(shape):
    """Past the 64:1 aspect ratio only the crop's window is resized: the same centre and scale as resizing the
    whole image and cropping it, so the same pixels, give or take one level of 255 from rounding."""
    rng = np.random.default_rng(0)
    w, h = shape
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    size = 32
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    assert nw * nh > 64 * size * size   # the window path
    left, top = (nw - size) // 2, (nh - size) // 2
    whole = image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None if max(w, h) < 4 * size else 2.0)
    expected = np.asarray(whole.crop((left, top, left + size, top + size)), dtype=np.int16)
    got = np.asarray(_fit(image, size), dtype=np.int16)
    assert got.shape == expected.shape == (size, size, 3)
    assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("shape", [(640, 480), (480, 640), (4000, 3000), (2000, 40), (40, 2000), (33, 31)])
def test_an_image_up_to_64_to_1_is_resized_whole_then_cropped_as_always(shape):
    """The stored galleries' vectors were made from these exact pixels: up to 64:1 nothing changes."""
    rng = np.random.default_rng(1)
    w, h = shape
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    for size in (28, 32, 224):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        whole = image.resize((nw, nh), Image.Resampling.BILINEAR,
                             reducing_gap=None if max(w, h) < 4 * size else 2.0)
        assert np.array_equal(np.asarray(_fit(image, size)),
                              np.asarray(whole.crop((left, top, left + size, top + size))))


def test_a_thin_crop_region_of_a_photo_is_embedded_from_its_window():
    """A crop region can be a strip of an ordinary image (1% of a photo's width): it takes the same path."""
    image = Image.new("RGB", (20000, 1000), (10, 120, 200))
    arr = model.to_model_array(image, 3, 32, crop=(0.0, 0.0, 1.0, 0.001))   # 20000 x 1 pixels
    assert arr.shape == (3, 32, 32)
    assert (arr == np.array([10, 120, 200], np.uint8)[:, None, None]).all()
