"""Fixtures for the index tests: store factories and real embeddings of real CIFAR-10 images."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import Store, StoreConfig

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """n random unit vectors (float32)."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def open_store(tmp_path):
    """open_store(**config) -> an open Store in tmp_path/store (closed at teardown)."""
    opened: list[Store] = []

    def _open(path: Path | None = None, **kw) -> Store:
        kw.setdefault("dim", DIM)
        kw.setdefault("model_id", "test-model@000000000000")
        kw.setdefault("snapshot_every", 0)
        store = Store.open(StoreConfig(path=path or tmp_path / "store", **kw))
        opened.append(store)
        return store

    yield _open
    for s in opened:
        s.close()


def _cifar_arrays(tar_path: Path, split: str, per_class: int, embedder) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    arrays, labels = [], []
    with tarfile.open(tar_path) as tf:
        for member in tf:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != split:
                continue
            if int(parts[3].split(".")[0]) >= per_class:
                continue
            with Image.open(io.BytesIO(tf.extractfile(member).read())) as im:
                arrays.append(embedder.preprocess(im))
            labels.append(parts[2])
    return np.stack(arrays), labels


@pytest.fixture(scope="session")
def cifar_embeddings(shared_data, hybrid1_artifact):
    """Real embeddings of real images: 5,000 CIFAR-10 (JPEG) train images as the gallery and
    200 test images as queries, embedded by the trained Hybrid-1 artifact when it exists, else
    by the seeded untrained one (`hybrid1_artifact`). Returns (gallery, labels, queries, model_id)."""
    import model

    path = model.default_artifact_path("cifar10")
    embedder = model.Embedder.from_file(path if path.exists() else hybrid1_artifact, device="cpu")
    tar = shared_data / "cifar10-jpeg.tar"
    g_arr, g_labels = _cifar_arrays(tar, "train", 500, embedder)
    q_arr, _ = _cifar_arrays(tar, "test", 20, embedder)
    return embedder.embed_arrays(g_arr), g_labels, embedder.embed_arrays(q_arr), embedder.model_id


@pytest.fixture
def one_faiss_thread():
    """FAISS searching on one thread: its OpenMP threads spin on a loaded machine (or compete on one of many cores),
    and the search's parts under the lock (FAISS) would then take as long as the scan between them, which the tests
    of searches outside the lock tell apart."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
