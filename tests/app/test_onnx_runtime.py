"""SIMSEARCH_RUNTIME=onnx over real HTTP: the service embeds with onnxruntime, finds what torch indexed,
stores what torch finds, and answers a vector made on another device by the exported ONNX file."""
from __future__ import annotations

import io
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
from PIL import Image

import model
from cli import main

from .conftest import start_server, stop_server
from .test_api import upload

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights"


def test_the_onnx_runtime_serves_the_vectors_torch_and_an_exported_file_make(cifar, tmp_path):
    artifact = WEIGHTS / "hybrid1-res-s1-cifar10.safetensors"   # mirror-image averaging: the larger graph
    photos = tmp_path / "photos"
    for label, images in cifar.items():
        (photos / label).mkdir(parents=True)
        for i, data in enumerate(images[:6]):
            (photos / label / f"{i}.jpg").write_bytes(data)
    # The gallery embedded by torch (index build)...
    assert main(["index", "build", str(photos), "--model", str(artifact), "--data", str(tmp_path / "data")]) == 0
    # ...and an ONNX file made for an app on another device.
    onnx_file = tmp_path / "phone.onnx"
    assert main(["model-export", str(artifact), "--out", str(onnx_file)]) == 0
    on_device = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    made_by = on_device.get_modelmeta().custom_metadata_map["simsearch.model_id"]
    live = start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RUNTIME": "onnx", "SIMSEARCH_API_KEY": "k",
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": "k"}) as c:
            assert c.get("/readyz").json()["runtime"] == "onnxruntime"
            for label, images in cifar.items():
                for i, data in enumerate(images[:6]):
                    want = f"{label}/{i}.jpg"
                    # an upload, embedded by onnxruntime, finds the image torch stored, at cosine 1
                    hit = c.post("/search?k=1", files=[upload(data, "q.jpg", "image/jpeg")]).json()["results"][0]
                    assert hit["id"] == want and hit["score"] == pytest.approx(1.0, abs=1e-5)
                    # a vector the exported file made on the "device" does too
                    pixels = model.to_model_array(Image.open(io.BytesIO(data)), 3, 32)[None]
                    vector = on_device.run(["embeddings"], {"images": pixels})[0][0]
                    hit = c.post("/search?k=1", json={"vector": vector.tolist(), "model": made_by}).json()["results"][0]
                    assert hit["id"] == want and hit["score"] == pytest.approx(1.0, abs=1e-5)
            # What the onnx runtime stores is what torch would: a torch vector finds the new item at cosine 1.
            new = cifar["airplane"][7]
            assert c.post("/index", files=[upload(new, "n.jpg", "image/jpeg")], data={"id": "new"}).status_code == 201
            torch_vector = model.Embedder.from_file(artifact, device="cpu").embed([Image.open(io.BytesIO(new))])[0]
            hit = c.post("/search?k=1", json={"vector": torch_vector.tolist()}).json()["results"][0]
            assert hit["id"] == "new" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        log = live.log_tail(20_000)
        assert "onnxruntime" in log and "Traceback" not in log
    finally:
        stop_server(live)


def test_the_onnx_runtime_on_a_gpu_device_is_refused_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "simsearch"
    r = subprocess.run([str(exe), "serve", "--runtime", "onnx", "--device", "cuda"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=os.environ)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "SIMSEARCH_RUNTIME onnx runs on the CPU; SIMSEARCH_DEVICE cuda needs SIMSEARCH_RUNTIME torch" in r.stderr
