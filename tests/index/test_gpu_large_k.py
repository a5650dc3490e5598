"""A search for more neighbours than FAISS's GPU indexes select (GPU_MAX_K) answers from the CPU copy, the same as
a store without a GPU; the GPU copy would raise. Runs only where this FAISS build sees a GPU (faiss-gpu): on the
CPU-only machines the tests usually run on, it is skipped, saying so."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item
from index._faiss import GPU_MAX_K, gpu_available

from .conftest import unit

pytestmark = pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")


def test_more_neighbours_than_the_gpu_selects_come_from_the_cpu_copy(open_store, tmp_path):
    rng = np.random.default_rng(3)
    gallery, queries = unit(rng, GPU_MAX_K + 1000), unit(rng, 3)
    items = [Item(f"i{i}", v) for i, v in enumerate(gallery)]
    on_gpu = open_store(tmp_path / "gpu", index="flat", use_gpu=True)
    on_cpu = open_store(tmp_path / "cpu", index="flat", use_gpu=False)
    for store in (on_gpu, on_cpu):
        store.upsert(items)
    k = GPU_MAX_K + 500
    for got, want in zip(on_gpu.search(queries, k=k), on_cpu.search(queries, k=k)):
        assert [h.id for h in got] == [h.id for h in want]
    # and a k the GPU takes still answers there, the same
    small = on_gpu.search(queries, k=10)
    assert [[h.id for h in r] for r in small] == [[h.id for h in r] for r in on_cpu.search(queries, k=10)]
