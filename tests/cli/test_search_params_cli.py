"""`simsearch search --nprobe/--ef-search/--exact`: a search's own index parameters, here and through a running
service (--url): --exact prints the brute-force answer of an IVF gallery, --nprobe 1 misses some of it, and what
cannot be meant is refused naming the option."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli import main
from tests.app.conftest import encode, pattern, stop_server

from .test_upload import serving

N, K = 3000, 10


@pytest.fixture
def ivf_gallery(hybrid1_artifact, tmp_path):
    """DATA/index: a trained IVF index of N random unit vectors of the model's dimension; (query image path, the ids
    of its K nearest by numpy)."""
    from PIL import Image

    import index
    import model

    embedder = model.Embedder.from_file(hybrid1_artifact)
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((N, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cfg = index.StoreConfig(index.gallery_path(tmp_path / "data", "default"), dim=embedder.dim,
                            model_id=embedder.model_id, index="ivf", train_threshold=1000)
    with index.Store.open(cfg) as store:
        store.upsert([index.Item(f"i{i}", v) for i, v in enumerate(vectors)])
        store.rebuild()
    query = tmp_path / "query.png"
    query.write_bytes(encode(pattern(5), "PNG"))
    with Image.open(query) as im:
        q = embedder.embed_arrays(embedder.preprocess(im)[None])[0]
    scores = vectors @ q
    return query, [f"i{i}" for i in np.lexsort((np.arange(N), -scores))[:K]]


def _ids(capsys, args: list[str]) -> list[str]:
    assert main(args) == 0, capsys.readouterr().err
    return [h["id"] for h in json.loads(capsys.readouterr().out)]


def test_exact_prints_the_brute_force_answer_and_a_tiny_nprobe_misses_some_here_and_through_a_service(
        ivf_gallery, hybrid1_artifact, tmp_path, capsys):
    query, truth = ivf_gallery
    local = ["search", str(query), "-k", str(K), "--json", "--data", str(tmp_path / "data"), "--model",
             str(hybrid1_artifact)]
    assert _ids(capsys, local + ["--exact"]) == truth
    tiny = _ids(capsys, local + ["--nprobe", "1"])
    assert tiny != truth
    live = serving(hybrid1_artifact, tmp_path)
    try:
        remote = ["search", str(query), "-k", str(K), "--json", "--url", live.url]
        assert _ids(capsys, remote + ["--exact"]) == truth
        assert _ids(capsys, remote + ["--nprobe", "1"]) == tiny
        assert main(remote + ["--ef-search", "64"]) == 2   # the service's 422, said
        assert "ef_search=64 applies to HNSW indexes (hnsw); this gallery's index is 'ivf'" in capsys.readouterr().err
    finally:
        stop_server(live)
    assert main(local + ["--nprobe", "5000"]) == 2
    assert "nprobe=5000 is more than the 76 lists of this gallery's IVF index" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--nprobe", "0"], "--nprobe must be a positive number, got 0"),
    (["--exact", "--nprobe", "4"], "--exact compares every vector: --nprobe 4 has nothing left to set"),
    (["--ef-search", "5"], "--ef-search 5 is less than -k 10"),
])
def test_what_the_options_cannot_mean_is_refused_before_the_model_loads(tmp_path, capsys, extra, message):
    assert main(["search", "nothing.png", "-k", "10", "--data", str(tmp_path / "none"), *extra]) == 2
    assert message in capsys.readouterr().err
