"""A search's own index parameters over HTTP: nprobe, ef_search and exact on POST /search, /search/{id},
/batch/search and /classify; their bounds (422 naming the value, and the gallery's kind or lists); requests with
different parameters batched together each answered with their own; a gallery in Milvus refusing them clearly."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app._batcher import MicroBatcher, SearchParams
from app._metrics import Metrics

from .conftest import encode, pattern, running

pytestmark = pytest.mark.anyio
N, K = 3000, 10


@pytest.fixture(scope="module")
def galleries(hybrid1_artifact, tmp_path_factory):
    """A data folder whose default gallery is a trained IVF index and whose gallery `graph` is HNSW, both of N random
    unit vectors of the model's dimension; (data folder, the vectors)."""
    import index
    import model

    embedder = model.Embedder.from_file(hybrid1_artifact)
    data = tmp_path_factory.mktemp("params") / "data"
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for name, kind in (("default", "ivf"), ("graph", "hnsw")):
        cfg = index.StoreConfig(index.gallery_path(data, name), dim=embedder.dim, model_id=embedder.model_id,
                                index=kind, train_threshold=1000)
        with index.Store.open(cfg) as store:
            store.upsert([index.Item(f"i{i}", v, label="odd" if i % 2 else "even") for i, v in enumerate(vectors)])
            store.rebuild()
    return data, vectors


def _brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = vectors @ query
    return [f"i{i}" for i in np.lexsort((np.arange(len(vectors)), -scores))[:k]]


def _ids(answer: dict) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


@pytest.fixture
def settings(hybrid1_artifact, galleries):
    from .conftest import settings_for

    return settings_for(hybrid1_artifact, galleries[0])


async def test_exact_and_nprobe_answer_on_every_search_route(settings, galleries):
    _, vectors = galleries
    query = vectors[7] + 0.5 * vectors[8]
    query = (query / np.linalg.norm(query)).tolist()
    truth = _brute_force(vectors, np.asarray(query, np.float32), K)
    async with running(settings) as client:
        exact = (await client.post("/search", params={"k": K, "exact": "true"}, json={"vector": query})).json()
        assert _ids(exact) == truth
        tiny = (await client.post("/search", params={"k": K, "nprobe": 1}, json={"vector": query})).json()
        assert _ids(tiny) != truth   # one list of about 200: most of the nearest are in others
        default = (await client.post("/search", params={"k": K}, json={"vector": query})).json()
        assert len(set(_ids(tiny)) & set(truth)) < len(set(_ids(default)) & set(truth)) or _ids(default) == truth

        by_id = (await client.post("/search/i7", params={"k": K, "exact": "true"})).json()
        assert _ids(by_id) == _brute_force(vectors, vectors[7], K + 1)[1:]
        batch = (await client.post("/batch/search", params={"k": K, "exact": "true"},
                                   json={"vectors": [query, vectors[3].tolist()]})).json()
        assert [_ids(q) for q in batch["queries"]] == [truth, _brute_force(vectors, vectors[3], K)]
        classify = (await client.post("/classify", params={"k": 5, "exact": "true"}, json={"vector": query})).json()
        assert _ids(classify) == truth[:5]
        tiny_batch = (await client.post("/batch/search", params={"k": K, "nprobe": 1}, json={"vectors": [query]}))
        assert _ids(tiny_batch.json()["queries"][0]) == _ids(tiny)

        graph = {"gallery": "graph", "k": K}
        assert _ids((await client.post("/search", params={**graph, "exact": "true"}, json={"vector": query})).json()) \
            == truth
        r = await client.post("/search", params={**graph, "ef_search": K}, json={"vector": query})
        assert r.status_code == 200 and len(_ids(r.json())) == K


@pytest.mark.parametrize("params, status, message", [
    ({"nprobe": 0}, 422, "nprobe: Input should be greater than or equal to 1 (got '0')"),
    ({"nprobe": 20000}, 422, "nprobe: Input should be less than or equal to 16384 (got '20000')"),
    ({"ef_search": 40000, "gallery": "graph"}, 422, "ef_search: Input should be less than or equal to 32768"),
    ({"exact": "maybe"}, 422, "exact: Input should be a valid boolean"),
    ({"nprobe": 4, "exact": "true"}, 422, "exact=true compares every vector: nprobe=4 has nothing left to set"),
    ({"ef_search": 5, "k": 10, "gallery": "graph"}, 422, "ef_search=5 is less than k=10"),
    ({"nprobe": 2000}, 422, "gallery 'default': nprobe=2000 is more than the 76 lists of this gallery's IVF index"),
    ({"ef_search": 64}, 422, "gallery 'default': ef_search=64 applies to HNSW indexes (hnsw); this gallery's index "
                             "is 'ivf', which takes nprobe instead"),
    ({"nprobe": 8, "gallery": "graph"}, 422, "gallery 'graph': nprobe=8 applies to IVF indexes (ivf, ivfpq); this "
                                             "gallery's index is 'hnsw', which takes ef_search instead"),
])
async def test_a_parameter_out_of_bounds_or_not_for_the_gallerys_kind_is_a_422_naming_it(settings, galleries, params,
                                                                                          status, message):
    _, vectors = galleries
    async with running(settings) as client:
        for path, body in (("/search", {"json": {"vector": vectors[1].tolist()}}),
                           ("/search/i1", {}),
                           ("/batch/search", {"json": {"vectors": [vectors[1].tolist()]}}),
                           ("/classify", {"json": {"vector": vectors[1].tolist()}})):
            if path == "/classify" and params.get("k", 1) > 100:
                continue
            r = await client.post(path, params={"k": 3, **params} if "k" not in params else params, **body)
            assert r.status_code == status, (path, r.text)
            assert message in r.json()["error"]["message"], (path, r.text)


async def test_concurrent_image_searches_with_different_parameters_each_get_their_own_answer(settings):
    images = [encode(pattern(seed), "PNG") for seed in range(4)]
    asks = [{"k": K, "nprobe": 1}, {"k": K, "exact": "true"}, {"k": K}]
    async with running(settings) as client:
        async def ask(image: bytes, params: dict) -> list[str]:
            r = await client.post("/search", params=params, files={"file": ("q.png", image)})
            assert r.status_code == 200, r.text
            return _ids(r.json())

        alone = {(i, j): await ask(image, params) for i, image in enumerate(images) for j, params in enumerate(asks)}
        assert any(alone[i, 0] != alone[i, 1] for i in range(len(images)))   # nprobe=1 misses what exact finds
        pairs = [(i, j) for i in range(len(images)) for j in range(len(asks))] * 3
        together = await asyncio.gather(*(ask(images[i], asks[j]) for i, j in pairs))
        assert together == [alone[pair] for pair in pairs]


async def test_one_batch_of_requests_with_different_parameters_makes_one_index_call_for_each():
    """Two jobs in one batch (the model held until both are queued), one with nprobe=1, one exact: one search call
    each, with its own parameters, and each job gets its own call's hits."""
    release, calls = threading.Event(), []

    def embed(arrays: np.ndarray) -> np.ndarray:
        assert release.wait(10)
        return arrays.reshape(len(arrays), -1)[:, :2].astype(np.float32)

    def search(vectors: np.ndarray, params: SearchParams) -> list:
        calls.append((len(vectors), params.nprobe, params.exact))
        return [[(params.nprobe, params.exact, float(v[0]))] for v in vectors]

    batcher = MicroBatcher(embed, search, max_size=8, max_wait_s=0.0, metrics=Metrics())
    batcher.start()
    try:
        image = np.full((1, 1, 2, 2), 5, np.uint8)
        first = asyncio.ensure_future(batcher.submit(image, SearchParams(3)))   # occupies the model thread
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(batcher.submit(image, SearchParams(3, nprobe=1))),
                asyncio.ensure_future(batcher.submit(image, SearchParams(3, exact=True)))]
        await asyncio.sleep(0.05)
        release.set()
        await first
        (_, one), (_, exact) = await asyncio.gather(*jobs)
    finally:
        await batcher.stop()
    assert one == [[(1, False, 5.0)]] and exact == [[(None, True, 5.0)]]
    assert sorted(calls[1:], key=str) == sorted([(1, 1, False), (1, None, True)], key=str)


async def test_a_gallery_in_milvus_answers_the_parameters_with_a_clear_422_never_a_500(make_settings, tmp_path):
    """Until MilvusStore's search declares them, every one is refused saying so; once it does, those its (flat)
    kind does not take are refused naming the kind, and exact is its own search."""
    pytest.importorskip("pymilvus")
    import inspect

    from index import MilvusStore

    takes = "exact" in inspect.signature(MilvusStore.search).parameters
    async with running(make_settings(milvus_uri=str(tmp_path / "galleries.db"))) as client:
        dim = (await client.get("/index")).json()["dimension"]
        query = {"vector": [1.0] + [0.0] * (dim - 1)}
        assert (await client.post("/search", params={"k": 3}, json=query)).status_code == 200
        for params in ({"nprobe": 4}, {"ef_search": 16}, {"exact": "true"}):
            for r in (await client.post("/search", params={"k": 3, **params}, json=query),
                      await client.post("/search/nothing", params={"k": 3, **params})):
                if not takes:
                    assert r.status_code == 422, r.text
                    assert "is kept in Milvus, whose searches here take no nprobe, ef_search or exact yet" in r.text
                elif "exact" in params:
                    assert r.status_code in (200, 404), r.text   # /search/nothing: no such item
                else:
                    assert r.status_code == 422 and "this gallery's index is 'flat'" in r.text, r.text


def test_the_services_bounds_are_the_indexs():
    from index import _faiss

    from app import _params

    assert (_params.MAX_NPROBE, _params.MAX_EF_SEARCH) == (_faiss.NLIST_MAX, _faiss.EF_SEARCH_MAX)
