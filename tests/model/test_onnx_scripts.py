"""Embedder(runtime="onnx") exports in a child process that never re-runs the caller's script: a plain script
without `if __name__ == "__main__":` works, runs its body once, and a user's architecture (a .py file, or a
class of the script itself) is exported too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..user_models import write_user_models

REPO = Path(__file__).resolve().parents[2]

# Each prints its body's first line once per run of the body, then the least cosine of the onnx runtime's
# vectors to torch's on random pixels.
COMPARE = """
x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
onnx = model.Embedder(art, runtime="onnx")
torch_ = model.Embedder(art, runtime="torch")
print(onnx.runtime, round(float((onnx.embed_arrays(x) * torch_.embed_arrays(x)).sum(1).min()), 5))
"""
HEAD = f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport numpy as np\nimport model\nprint('BODY RUNS')\n"


def _run(script: str, tmp_path: Path, stdin: bool = False) -> subprocess.CompletedProcess:
    path = tmp_path / "plain_script.py"
    path.write_text(script)
    command = [sys.executable, "-"] if stdin else [sys.executable, str(path)]
    return subprocess.run(command, input=script if stdin else None, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


def test_a_script_without_a_main_guard_embeds_with_onnx_and_runs_its_body_once(tmp_path):
    script = HEAD + f"art = model.load_artifact({str(REPO / 'model/weights/hybrid1-cifar10.safetensors')!r})\n"
    for stdin in (False, True):
        done = _run(script + COMPARE, tmp_path, stdin)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines.count("BODY RUNS") == 1 and lines[-1] == "onnxruntime 1.0", done.stdout


def test_a_users_architecture_from_a_file_is_exported_in_the_child(tmp_path):
    path = write_user_models(tmp_path / "mine", arch="users_cnn_onnx")
    script = HEAD + (f"model.import_models([{str(path)!r}])\n"
                     "meta = model.ArtifactMeta(name='mine', arch='users_cnn_onnx', embed_dim=64)\n"
                     "art = model.Artifact(meta, model.create_model('users_cnn_onnx').eval(), {}, '0' * 64)\n")
    done = _run(script + COMPARE, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["BODY RUNS", "onnxruntime 1.0"]


def test_an_architecture_defined_in_the_script_itself_is_exported(tmp_path):
    script = HEAD + (
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.in_chans, self.embed_dim = 3, 16\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1),\n"
        "                                  nn.Flatten(), nn.Linear(8, 16))\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n"
        "meta = model.ArtifactMeta(name='own', arch='hybrid1', embed_dim=16)\n"
        "art = model.Artifact(meta, Net().eval(), {}, '0' * 64)\n")
    done = _run(script + COMPARE, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["BODY RUNS", "onnxruntime 1.0"]
