"""Fixtures of the command-line tests."""
from __future__ import annotations

import tarfile

import pytest


@pytest.fixture
def cat_and_ship_photos(shared_data, tmp_path):
    """Real CIFAR-10 (JPEG) test images, 6 cats and 6 ships, as an ImageFolder: tmp_path/photos/{cat,ship}/."""
    folder = tmp_path / "photos"
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "test" and parts[2] in ("cat", "ship") \
                    and int(parts[3][:4]) < 6:
                out = folder / parts[2] / parts[3]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tf.extractfile(m).read())
    return folder
