"""A real `simsearch serve` process serving an artifact of an architecture of the user's own, imported
through SIMSEARCH_MODEL_MODULES; and one whose module cannot be imported, which says so and stays up."""
from __future__ import annotations

import subprocess
import sys

import httpx

from ..user_models import write_user_models
from .conftest import start_server, stop_server
from .test_api import png, upload

_SAVE = """
import sys, model
model.import_models(sys.argv[1])
arch = "users_cnn_served"
meta = model.ArtifactMeta(name="users-cnn", arch=arch, arch_source=model.model_source(arch), embed_dim=64)
model.save_artifact(sys.argv[2], model.create_model(arch), meta)
"""


def test_the_service_serves_an_architecture_of_the_users_own_named_in_simsearch_model_modules(tmp_path):
    module = write_user_models(tmp_path / "mine", arch="users_cnn_served")
    artifact = tmp_path / "users-cnn.safetensors"
    subprocess.run([sys.executable, "-c", _SAVE, str(module), str(artifact)], check=True, timeout=120)
    env = {"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    live = start_server({**env, "SIMSEARCH_MODEL_MODULES": str(module)}, tmp_path)
    try:
        ready = httpx.get(live.url + "/readyz", timeout=10).json()
        assert ready["model"].startswith("users-cnn@")
        for seed in range(3):
            r = httpx.post(live.url + "/index", files=[upload(png(seed))], data={"id": f"p{seed}"}, timeout=30)
            assert r.status_code == 201, r.text
        r = httpx.post(live.url + "/search?k=3", files=[upload(png(1))], timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == "p1" and r.json()["model"] == ready["model"]
        embedded = httpx.post(live.url + "/embed", files=[upload(png(2))], timeout=30).json()
        assert embedded["dimension"] == 64 and len(embedded["vectors"][0]) == 64
    finally:
        stop_server(live)
    assert "Traceback" not in live.log.read_text(errors="replace"), live.log_tail()

    # the module not importable: not ready, with the reason, and still answering
    live = start_server({**env, "SIMSEARCH_MODEL_MODULES": "no_such_models"}, tmp_path, ready=False,
                        log_name="bad.log")
    try:
        r = httpx.get(live.url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert ("SIMSEARCH_MODEL_MODULES: cannot import model module 'no_such_models': ModuleNotFoundError"
                in r.json()["error"]["message"])
        assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_server(live)

    # the module not named at all: not ready, naming the artifact once, the architecture and where it came from
    live = start_server(env, tmp_path, ready=False, log_name="unnamed.log")
    try:
        r = httpx.get(live.url + "/readyz", timeout=10)
        assert r.status_code == 503
        message = r.json()["error"]["message"]
        assert (f"cannot load the model artifact {artifact}: architecture 'users_cnn_served' is not known here "
                f"(it was registered by '{module}'") in message, message
        assert message.count(str(artifact)) == 1, message
        assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_server(live)
