"""The service without the `train` and `onnx` extras, as the container installs it: `simsearch index
build`, `simsearch serve` over real HTTP and `simsearch models` work; the training commands, the ONNX
export and the onnx runtime say what to install.

The extra's packages are made unimportable in the child processes (a sitecustomize.py that sets their
sys.modules entries to None, which is what Python does for a package that is not there), so any
import of them on the serving path fails these tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import start_server, stop_server

SIMSEARCH = str(Path(sys.executable).parent / "simsearch")
REPO = Path(__file__).resolve().parents[2]
# the import names of pyproject's `train` extra, and scipy, which only they bring; then the `onnx` extra's
TRAIN_ONLY = ("torchvision", "pytorch_metric_learning", "sklearn", "kornia", "timm", "scipy")
ONNX_ONLY = ("onnx", "onnxscript", "onnxruntime")


@pytest.fixture(scope="module")
def slim_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("slim-site")
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {TRAIN_ONLY + ONNX_ONLY!r}:\n"
        "    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    # the blocker itself works, or nothing below proves anything
    probe = subprocess.run([sys.executable, "-c", "import sklearn"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "sklearn" in probe.stderr
    return env


def _cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([SIMSEARCH, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def gallery(shared_data, tmp_path_factory) -> Path:
    """Eight real CIFAR-10 test JPEGs, four each of two classes, in an ImageFolder."""
    root, want = tmp_path_factory.mktemp("slim-gallery"), {"cat": 4, "ship": 4}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and want.get(parts[2], 0) > 0 and m.isfile():
                want[parts[2]] -= 1
                (root / parts[2]).mkdir(exist_ok=True)
                (root / parts[2] / parts[3]).write_bytes(tar.extractfile(m).read())
                if not any(want.values()):
                    break
    return root


def test_training_commands_without_the_train_extra_name_the_missing_packages(slim_env, shared_data, tmp_path):
    for args in (["train", str(shared_data / "mnist"), "--out", str(tmp_path / "m.safetensors")],
                 ["evaluate", "model/weights/hybrid1-mnist.safetensors", str(shared_data / "mnist")]):
        r = _cli(slim_env, *args)
        assert r.returncode == 2, r.stderr
        assert f"'simsearch {args[0]}' needs the training extra" in r.stderr
        assert "pytorch-metric-learning" in r.stderr and "pip install 'simsearch[train]'" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_the_onnx_export_and_runtime_without_the_onnx_extra_say_what_to_install(slim_env, tmp_path):
    r = _cli(slim_env, "model-export", "model/weights/hybrid1-mnist.safetensors", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "ONNX export needs onnx, onnxscript, onnxruntime: pip install 'simsearch[onnx]'" in r.stderr
    r = _cli(slim_env, "serve", "--runtime", "onnx", "--port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "SIMSEARCH_RUNTIME" in r.stderr and "pip install 'simsearch[onnx]'" in r.stderr
    assert not list(tmp_path.iterdir())


def test_models_lists_the_hybrid_zoo_and_says_what_the_baselines_need(slim_env):
    r = _cli(slim_env, "models")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "116,634 parameters" in lines["hybrid1"]
    assert "precision@1" in lines["hybrid1-cifar10"]   # the bundled artifacts after the zoo, without torchvision
    assert "needs torchvision" in lines["resnet50"] and "needs timm" in lines["resnet50v2"]


def test_a_baseline_artifact_without_torchvision_is_one_line_naming_the_package(slim_env, gallery, tmp_path):
    import model

    net = model.create_model("mobilenet_v2", in_chans=3)  # built here, where torchvision is installed
    meta = model.ArtifactMeta(name="mnv2-test", arch="mobilenet_v2", in_chans=3, image_size=32)
    artifact = model.save_artifact(tmp_path / "mnv2.safetensors", net, meta)
    query = sorted((gallery / "cat").iterdir())[0]
    r = _cli(slim_env, "search", str(query), "--model", str(artifact), "--data", str(tmp_path / "data"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "architecture 'mobilenet_v2' needs the package 'torchvision'" in r.stderr
    assert "pip install 'simsearch[train]'" in r.stderr


def test_index_build_and_the_server_work_without_the_train_extra(slim_env, gallery, tmp_path):
    data = tmp_path / "data"
    r = _cli(slim_env, "index", "build", str(gallery), "--data", str(data), "--workers", "1")
    assert r.returncode == 0, r.stderr
    overrides = {k: v for k, v in slim_env.items() if k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    live = start_server({**overrides, "SIMSEARCH_DATA_DIR": str(data), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"},
                        tmp_path)
    try:
        info = httpx.get(live.url + "/index", timeout=30).json()
        assert info["count"] == 8 and info["model"].startswith("hybrid1-cifar10")
        query = sorted((gallery / "ship").iterdir())[0]
        hits = httpx.post(live.url + "/search", params={"k": 3},
                          files={"file": (query.name, query.read_bytes(), "image/jpeg")}, timeout=30)
        assert hits.status_code == 200, hits.text
        top = hits.json()["results"][0]
        assert top["label"] == "ship" and top["score"] > 0.999
        added = httpx.post(live.url + "/index", data={"id": "extra", "label": "cat"},
                           files={"file": ("x.jpg", query.read_bytes(), "image/jpeg")}, timeout=30)
        assert added.status_code == 201, added.text
        assert httpx.get(live.url + "/index", timeout=30).json()["count"] == 9
    finally:
        stop_server(live)
    assert "ModuleNotFoundError" not in live.log_tail(20000)
