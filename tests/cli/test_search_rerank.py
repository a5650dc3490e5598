"""`simsearch search IMAGE --rerank N`: the N nearest gallery images re-ordered by the artifact's PDDM
head, the best k printed (real CLI processes, real CIFAR-10 JPEGs, a real store)."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import model

REPO = Path(__file__).resolve().parents[2]
SIMSEARCH = str(Path(sys.executable).parent / "simsearch")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SIMSEARCH, *args], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def setup(shared_data, hybrid1_artifact, tmp_path_factory):
    """A PDDM-headed artifact, a gallery of 12 real CIFAR-10 test JPEGs indexed with it, and a query."""
    work = tmp_path_factory.mktemp("rerank-cli")
    art = model.load_artifact(hybrid1_artifact)
    torch.manual_seed(11)
    head = model.PDDM(embed_dim=art.meta.embed_dim)
    meta = art.meta.model_copy(update={"name": "hybrid1-pddm-cli", "heads": {"pddm": head.build_args}})
    artifact = model.save_artifact(work / "pddm.safetensors", art.model, meta, heads={"pddm": head})
    gallery, want = work / "gallery", {"airplane": 6, "automobile": 6, "bird": 1}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and want.get(parts[2], 0) > 0 and m.isfile():
                want[parts[2]] -= 1
                dest = (work / "query.jpg") if parts[2] == "bird" else gallery / parts[2] / parts[3]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
                if not any(want.values()):
                    break
    r = cli("index", "build", str(gallery), "--data", str(work / "data"), "--model", str(artifact), "--workers", "1")
    assert r.returncode == 0, r.stderr
    return artifact, gallery, work / "query.jpg", work / "data"


def test_search_rerank_prints_the_pddm_order_of_the_nearest_candidates(setup):
    artifact, gallery, query, data = setup
    plain = cli("search", str(query), "--data", str(data), "--model", str(artifact), "-k", "8", "--json")
    assert plain.returncode == 0, plain.stderr
    top8 = [h["id"] for h in json.loads(plain.stdout)]
    r = cli("search", str(query), "--data", str(data), "--model", str(artifact), "-k", "3", "--rerank", "8", "--json")
    assert r.returncode == 0, r.stderr
    got = [h["id"] for h in json.loads(r.stdout)]
    # the same answer computed outside the CLI
    emb = model.Embedder.from_file(artifact, device="cpu")
    cands = emb.embed([Image.open(gallery / i) for i in top8])
    q = emb.embed([Image.open(query)])[0]
    order, _ = model.PDDM.from_artifact(model.load_artifact(artifact)).rerank(q, cands)
    assert got == [top8[i] for i in order[:3]]
    assert got != top8[:3]  # the PDDM changed the order
    text = cli("search", str(query), "--data", str(data), "--model", str(artifact), "-k", "3", "--rerank", "8")
    assert text.returncode == 0 and "re-ranked the 8 nearest candidates" in text.stdout


def test_search_rerank_needs_a_pddm_head_and_at_least_k_candidates(setup, hybrid1_artifact, tmp_path):
    artifact, _, query, data = setup
    r = cli("search", str(query), "--data", str(data), "--model", str(artifact), "-k", "5", "--rerank", "3")
    assert r.returncode != 0 and "--rerank" in r.stderr and "at least" in r.stderr
    # the head-less artifact has other weights' id, so it gets its own (empty) store
    r = cli("search", str(query), "--data", str(tmp_path / "other"), "--model", str(hybrid1_artifact),
            "-k", "3", "--rerank", "10")
    assert r.returncode != 0 and "PDDM" in r.stderr
