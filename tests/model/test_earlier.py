"""model.earlier_bundled: every bundled model file since replaced is listed with the commit whose `git show`
gives back exactly that file (the model id's hash), and the files bundled now are not listed."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import model

ROOT = Path(__file__).resolve().parents[2]


def _has_history() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True,
                          text=True)
    return done.returncode == 0 and done.stdout.strip() == "false"


@pytest.mark.skipif(not _has_history(), reason="needs a full git clone of simsearch")
def test_each_earlier_bundled_model_comes_back_from_its_commit_with_its_model_id():
    listed = json.loads((ROOT / "model" / "weights" / "earlier.json").read_text())
    assert len(listed) >= 30
    for model_id, entry in listed.items():
        earlier = model.earlier_bundled(model_id)
        assert earlier is not None and (earlier.commit, earlier.path) == (entry["commit"], entry["path"])
        data = subprocess.run(["git", "-C", str(ROOT), "show", f"{earlier.commit}:{earlier.path}"], check=True,
                              capture_output=True).stdout
        assert model_id.endswith("@" + hashlib.sha256(data).hexdigest()[:12]), model_id
        assert earlier.recover_command.startswith(f"git show {earlier.commit}:{earlier.path} > ")


def test_the_models_bundled_now_are_not_earlier_ones_and_an_unknown_id_is_none():
    for path in sorted((ROOT / "model" / "weights").glob("*.safetensors")):
        assert model.earlier_bundled(model.Embedder.from_file(path).model_id) is None, path.name
    assert model.earlier_bundled("hybrid1-cifar10@000000000000") is None
