"""Fixtures for training tests: a private dataset cache and small real datasets cut from ../shared/data."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m cli ARGS` from the repository, its dataset cache in `cache`, one torch thread, as a user's
    shell would run it (not inside torchrun: WORLD_SIZE dropped)."""
    full = {**os.environ, "SIMSEARCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's ~/.cache/simsearch."""
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "simsearch-cache"))


@pytest.fixture(scope="session")
def tiny_cifar_folder(shared_data, tmp_path_factory) -> Path:
    """A real ImageFolder tree (train/<class>/, test/<class>/): 12 train and 6 test CIFAR-10 (JPEG) images of
    each of 4 classes, copied out of the shared tar."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    want = {"train": 12, "test": 6}
    classes = ["airplane", "automobile", "cat", "ship"]
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in want or parts[2] not in classes:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= want[parts[1]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            dest = root / parts[1] / parts[2] / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
            if len(counts) == 8 and all(counts[k] >= want[k[0]] for k in counts):
                break
    return root
