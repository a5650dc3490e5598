"""The ONNX export (model.export_onnx) and the Embedder's onnx runtime give the vectors torch gives, at
any batch size, for every kind of bundled model (grey and RGB, with and without mirror-image averaging)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import model

from ..conftest import cifar_model_arrays

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights"
# One of each kind: the faithful RGB model (no tta), the residual stride-1 one (hflip), a grey one.
KINDS = ["hybrid1-cifar10", "hybrid1-res-s1-cifar10", "hybrid1-mnist"]


@pytest.fixture(scope="module")
def photos(shared_data) -> list[Image.Image]:
    """Nine real CIFAR-10 (JPEG) test images."""
    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.split("/")[1:2] == ["test"]:
                out.append(Image.open(tar.extractfile(m)).copy())
            if len(out) == 9:
                return out
    pytest.fail("no CIFAR-10 test images in the tar")


@pytest.mark.parametrize("name", KINDS)
def test_the_exported_file_embeds_real_photos_as_the_service_does(name, photos, tmp_path):
    torch_embedder = model.Embedder.from_file(WEIGHTS / f"{name}.safetensors", device="cpu")
    path = model.export_onnx(torch_embedder.artifact, tmp_path / f"{name}.onnx")
    # Read by onnxruntime alone, as an app on another device would.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = torch_embedder.meta
    arrays = np.stack([model.to_model_array(p, meta.in_chans, meta.image_size) for p in photos])
    for batch in (arrays[:1], arrays[1:8], arrays):   # the batch size is free
        got = session.run(["embeddings"], {"images": batch})[0]
        want = torch_embedder.embed_arrays(batch)
        assert got.shape == want.shape == (len(batch), meta.embed_dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # The file says what made it and what it expects.
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["simsearch.model_id"] == torch_embedder.model_id
    stored = json.loads(props["simsearch.meta"])
    assert (stored["in_chans"], stored["image_size"], stored["tta"]) == (meta.in_chans, meta.image_size, meta.tta)
    assert "to_model_array" in props["simsearch.input"]


def test_the_onnx_runtime_embeds_as_torch_does_across_its_batches(photos):
    path = WEIGHTS / "hybrid1-res-s1-cifar10.safetensors"
    torch_embedder = model.Embedder.from_file(path, device="cpu")
    onnx_embedder = model.Embedder.from_file(path, runtime="onnx", batch_size=4)
    assert onnx_embedder.runtime == "onnxruntime" and torch_embedder.runtime == "TorchScript graph"
    assert onnx_embedder.device.type == "cpu" and onnx_embedder.model_id == torch_embedder.model_id
    got = onnx_embedder.embed(photos)   # 9 images in batches of 4, 4 and 1
    np.testing.assert_allclose(got, torch_embedder.embed(photos), atol=1e-5)
    assert onnx_embedder.embed([]).shape == (0, 256)


def test_the_onnx_runtime_refuses_a_gpu_and_unknown_runtimes_are_named():
    art = model.load_artifact(WEIGHTS / "hybrid1-cifar10.safetensors")
    with pytest.raises(ValueError, match="onnx runtime runs on the CPU; device cuda"):
        model.Embedder(art, device="cuda", runtime="onnx")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; known: torch, onnx"):
        model.Embedder(art, device="cpu", runtime="tensorrt")


@pytest.mark.parametrize("opset", [5, 17, 99])
def test_an_opset_the_exporter_cannot_write_is_refused_with_the_range(opset):
    art = model.load_artifact(WEIGHTS / "hybrid1-mnist.safetensors")
    with pytest.raises(ValueError, match=rf"opset {opset}: the exporter writes opsets 18 to \d+"):
        model.to_onnx(art, opset=opset)


def test_a_chosen_opset_is_the_one_written():
    art = model.load_artifact(WEIGHTS / "hybrid1-mnist.safetensors")
    proto = onnx.load_from_string(model.to_onnx(art, opset=20))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]


def test_the_export_says_nothing_where_torchvision_is_not_installed():
    """The service image has no torchvision, and torch's exporter logs a warning for each of its
    detection operators it skips; none of that reaches the user (or the service's log)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import model\n"
            f"data = model.to_onnx(model.load_artifact({str(WEIGHTS / 'hybrid1-mnist.safetensors')!r}))\n"
            "print(len(data))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and int(r.stdout) > 100_000, r.stderr
    assert r.stderr == "", r.stderr


@pytest.fixture(scope="module")
def training_arrays(shared_data) -> np.ndarray:
    """100 real CIFAR-10 (JPEG) training images as the model's uint8 input: calibration data."""
    return cifar_model_arrays(shared_data, "train", 100)


def test_an_int8_graph_is_smaller_and_embeds_close_to_torch_on_unseen_photos(training_arrays, photos):
    embedder = model.Embedder.from_file(WEIGHTS / "hybrid1-cifar10.safetensors", device="cpu")
    float_graph = model.to_onnx(embedder.artifact)
    int8_graph = model.to_onnx(embedder.artifact, int8_calibration=training_arrays[:64])
    assert len(int8_graph) < 0.5 * len(float_graph)
    proto = onnx.load_from_string(int8_graph)
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["simsearch.model_id"] == embedder.model_id
    report = json.loads(props["simsearch.int8"])
    # three quarters set the ranges, the rest chose among the calibrations: the best of those tried
    assert (report["calibration_images"], report["checked_images"]) == (48, 16)
    assert report["mean_cosine_to_float"] >= 0.9 and set(report["tried"]) == {
        "minmax", "percentile 99.9", "percentile 99.99", "percentile 99.999"}
    assert report["tried"][report["calibration"]]["mean_cosine_to_float"] == max(
        t["mean_cosine_to_float"] for t in report["tried"].values())
    # test photos, not the calibration images: unit vectors, close to torch's
    arrays = np.stack([model.to_model_array(p, 3, 32) for p in photos])
    got = ort.InferenceSession(int8_graph, providers=["CPUExecutionProvider"]).run(["embeddings"], {"images": arrays})[0]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * embedder.embed_arrays(arrays)).sum(1).mean() > 0.9


def test_int8_calibration_on_a_count_that_is_not_a_multiple_of_the_batch_feeds_batches_of_one_size(training_arrays):
    # 100 images: 75 to fit, more than one batch of 64. The histogram (percentile) calibrators cannot
    # stack batches of different sizes ("inhomogeneous shape"), so the 75 go as two batches of 37 and the
    # one left over joins the 25 held out to choose among the calibrations.
    art = model.load_artifact(WEIGHTS / "hybrid1-cifar10.safetensors")
    proto = onnx.load_from_string(model.to_onnx(art, int8_calibration=training_arrays))
    report = json.loads({p.key: p.value for p in proto.metadata_props}["simsearch.int8"])
    assert (report["calibration_images"], report["checked_images"]) == (74, 26)
    assert set(report["tried"]) == {"minmax", "percentile 99.9", "percentile 99.99", "percentile 99.999"}
    assert report["mean_cosine_to_float"] >= 0.9


def test_int8_calibration_that_is_not_a_batch_of_images_is_refused():
    art = model.load_artifact(WEIGHTS / "hybrid1-mnist.safetensors")
    with pytest.raises(ValueError, match=r"uint8 images \(N, C, S, S\), got shape \(28, 28\)"):
        model.to_onnx(art, int8_calibration=np.zeros((28, 28), np.uint8))
