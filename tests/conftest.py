"""Fixtures shared by every test folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (or SIMSEARCH_SHARED_DATA): the real datasets."""
    root = Path(os.environ.get("SIMSEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "mnist").is_dir():
        pytest.fail(f"the real datasets are missing: {root} (set SIMSEARCH_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def hybrid1_artifact(tmp_path_factory) -> Path:
    """A Hybrid-1 RGB artifact with freshly initialised (seeded) weights, for tests of mechanics."""
    import model

    torch.manual_seed(0)
    net = model.create_model("hybrid1", in_chans=3)
    meta = model.ArtifactMeta(name="hybrid1-test", arch="hybrid1", in_chans=3, image_size=32,
                              class_names=[f"c{i}" for i in range(10)])
    return model.save_artifact(tmp_path_factory.mktemp("artifact") / "hybrid1-test.safetensors", net, meta)
