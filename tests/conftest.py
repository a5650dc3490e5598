"""Fixtures shared by every test folder."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The tests talk to servers of their own on this machine: a proxy named in the environment (HTTP_PROXY, ALL_PROXY),
# which httpx and gRPC (Milvus) follow for 127.0.0.1 too, must not catch them, nor those of the servers and commands
# the tests start (they inherit this)
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1,localhost,::1"]))


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


def cifar_model_arrays(shared_data: Path, split: str, n: int) -> np.ndarray:
    """The first n real CIFAR-10 (JPEG) images of `split` (train or test) as the model's uint8 input (n, 3, 32, 32)."""
    import tarfile

    import model

    out = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.split("/")[1:2] == [split]:
                out.append(model.to_model_array(Image.open(tar.extractfile(m)), 3, 32))
                if len(out) == n:   # C-contiguous, as a batch a caller makes (to_model_array's are views)
                    return np.ascontiguousarray(np.stack(out))
    raise AssertionError(f"fewer than {n} CIFAR-10 {split} images in the tar")


def noise_png(rng: np.random.Generator, size: int = 128) -> bytes:
    """A PNG of random pixels: noise does not compress, so each stored thumbnail takes its full share
    of a disk."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def noise_folder(root: Path, n: int, seed: int) -> Path:
    """An ImageFolder `root` with n noise PNGs in its class folder `noise` (1,000 take about 12 MB as a
    gallery); returns root."""
    (root / "noise").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / "noise" / f"{i:03d}.png").write_bytes(noise_png(rng))
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A real disk that fills, without root: (the mount point of a 16 MB tmpfs holding an 8 MB file
    `ballast`, the command prefix that runs a program where that tmpfs is mounted). The tmpfs lives
    in a user and mount namespace of its own (`unshare`), held open by a sleeping process."""
    with _private_tmpfs(tmp_path / "disk", f"head -c 8000000 /dev/zero > {tmp_path / 'disk'}/ballast") as disk:
        yield disk


@pytest.fixture
def private_disk(tmp_path):
    """A 16 MB tmpfs of this test's own, mounted as small_disk's is (without a ballast): (its mount
    point, the command prefix that runs a program where it is mounted). The prefix can remount it
    read-only (`mount -o remount,ro MOUNT`), which a process with files open for writing there blocks."""
    with _private_tmpfs(tmp_path / "disk", "true") as disk:
        yield disk


@contextmanager
def _private_tmpfs(mount: Path, then: str):
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("util-linux's unshare and nsenter are needed for a private tmpfs")
    mount.mkdir()
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=16m simsearch-test {mount} && {then} && echo mounted && exec sleep 900"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "mounted":
        holder.kill()
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {holder.stderr.read().strip()}")
    try:
        yield mount, ["nsenter", "-t", str(holder.pid), "--user", "--mount", "--preserve-credentials", "--"]
    finally:
        holder.kill()
        holder.wait(10)
