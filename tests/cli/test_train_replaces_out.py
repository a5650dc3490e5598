"""`simsearch train` into an --out that is an artifact already says, in one line, that it replaces it and which
model id it had: a gallery built with that model opens under it only."""
from __future__ import annotations

import shutil

import pytest

from cli import main
from model import Embedder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))


def test_train_into_an_existing_artifact_names_the_model_it_replaces_and_index_reembed(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    out = tmp_path / "models" / "photos.safetensors"
    out.parent.mkdir()
    shutil.copy(hybrid1_artifact, out)
    before = Embedder.from_file(out, device="cpu").model_id
    assert main(["train", str(cat_and_ship_photos), "--out", str(out), "--epochs", "1", "--quiet",
                 "--threads", "1"]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "replaces" in ln]
    assert len(said) == 1 and f"replaces {out} (model {before})" in said[0], said
    assert "simsearch index reembed" in said[0]
    assert Embedder.from_file(out, device="cpu").model_id != before

    main(["train", str(cat_and_ship_photos), "--out", str(tmp_path / "new.safetensors"), "--epochs", "1",
          "--quiet", "--threads", "1"])
    assert "replaces" not in capsys.readouterr().err   # a new --out replaces nothing
