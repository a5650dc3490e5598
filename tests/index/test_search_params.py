"""A search's own index parameters (Store.search's nprobe, ef_search, exact): exact gives the brute-force answer
on every approximate kind, a small nprobe or ef_search visibly misses, and what a kind does not take, or is out
of its bounds, is refused naming the value."""
from __future__ import annotations

import numpy as np
import pytest

from index import InvalidItemError, Item

from .conftest import unit

N, K = 4000, 10


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(7)
    return unit(rng, N), unit(rng, 40)


def _filled(open_store, kind: str, gallery: np.ndarray, **config):
    store = open_store(index=kind, train_threshold=1000, **config)
    store.upsert([Item(f"i{i}", v, label="odd" if i % 2 else "even") for i, v in enumerate(gallery)])
    store.rebuild()   # trained on every vector
    return store


def _brute_force(gallery: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Each query's k nearest ids and scores by numpy (ties by position, as the store settles them by FAISS id)."""
    scores = queries @ gallery.T
    rows = np.arange(len(gallery)) if allowed is None else allowed
    out = []
    for s in scores:
        order = rows[np.lexsort((rows, -s[rows]))][:k]
        out.append(([f"i{i}" for i in order], s[order]))
    return out


def _recall(found, truth) -> float:
    return float(np.mean([len({h.id for h in hits} & set(ids)) / len(ids) for hits, (ids, _) in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_exact_gives_the_brute_force_answer_on_every_approximate_kind(open_store, vectors, kind):
    gallery, queries = vectors
    # the store's own parameters as small as they go: exact owes them nothing
    store = _filled(open_store, kind, gallery, nprobe=1, ef_search=1)
    truth = _brute_force(gallery, queries, K)
    found = store.search(queries, k=K, exact=True)
    for hits, (ids, scores) in zip(found, truth):
        assert [h.id for h in hits] == ids
        np.testing.assert_allclose([h.score for h in hits], scores, atol=2e-6)
    # with a filter, and around a stored item (itself left out), exactly too
    odd = np.arange(1, N, 2)
    filtered = store.search(queries, k=K, label="odd", exact=True)
    for hits, (ids, _) in zip(filtered, _brute_force(gallery, queries, K, odd)):
        assert [h.id for h in hits] == ids
    near = store.search_by_id("i5", k=K, exact=True)
    assert [h.id for h in near] == _brute_force(gallery, gallery[5:6], K + 1)[0][0][1:]


@pytest.mark.parametrize("kind, tiny, wide", [("ivf", {"nprobe": 1}, {"nprobe": 10_000}),
                                              ("ivfpq", {"nprobe": 1}, None),
                                              ("hnsw", {"ef_search": K}, {"ef_search": 2000})])
def test_a_tiny_nprobe_or_ef_search_misses_what_the_exact_search_finds(open_store, vectors, kind, tiny, wide):
    gallery, queries = vectors
    store = _filled(open_store, kind, gallery)
    truth = _brute_force(gallery, queries, K)
    assert _recall(store.search(queries, k=K, exact=True), truth) == 1.0
    tiny_recall = _recall(store.search(queries, k=K, **tiny), truth)
    assert tiny_recall < 0.9, tiny_recall   # random vectors in 32 dimensions: no index finds them cheaply
    assert tiny_recall < _recall(store.search(queries, k=K), truth)   # less than the store's own parameters
    if wide is not None and kind == "hnsw":
        assert _recall(store.search(queries, k=K, **wide), truth) > tiny_recall
    if wide is not None and kind == "ivf":   # nprobe above the lists: refused, naming them
        nlist = int(store.info()["index_kind"].split("nlist=")[1].rstrip(")"))
        with pytest.raises(InvalidItemError, match=f"nprobe=10000 is more than the {nlist} lists"):
            store.search(queries, k=K, **wide)
        assert _recall(store.search(queries, k=K, nprobe=nlist), truth) == 1.0   # every list of IVF-Flat: exact


def test_a_filter_widens_the_searchs_own_nprobe_as_it_widens_the_stores(open_store, vectors):
    gallery, queries = vectors
    store = _filled(open_store, "ivf", gallery)
    odd = np.arange(1, N, 2)
    truth = _brute_force(gallery, queries, K, odd)
    # nprobe=2 probes 4 lists for a filter keeping half the gallery: as many allowed candidates as 2 unfiltered
    # lists hold, and more of the filtered answer than 2 lists would find
    widened = _recall(store.search(queries, k=K, label="odd", nprobe=2), truth)
    assert widened > _recall(store.search(queries, k=K, nprobe=2), _brute_force(gallery, queries, K)) + 0.05


@pytest.mark.parametrize("kind, kw, message", [
    ("flat", {"nprobe": 4}, r"nprobe=4 applies to IVF indexes \(ivf, ivfpq\); this gallery's index is 'flat', "
                            r"which compares every vector already"),
    ("hnsw", {"nprobe": 4}, r"nprobe=4 applies to IVF .* index is 'hnsw', which takes ef_search instead"),
    ("ivf", {"ef_search": 64}, r"ef_search=64 applies to HNSW indexes \(hnsw\); .* 'ivf', which takes nprobe"),
    ("hnsw", {"ef_search": 40_000}, r"ef_search=40000 is more than 32768"),
    ("hnsw", {"ef_search": 0}, r"ef_search must be a positive integer, got 0"),
    ("ivf", {"nprobe": True}, r"nprobe must be a positive integer, got True"),
    ("ivf", {"nprobe": 4, "exact": True}, r"exact=True compares every vector: nprobe=4"),
    ("ivf", {"exact": "yes"}, r"exact must be True or False, got 'yes'"),
])
def test_a_parameter_the_kind_does_not_take_or_out_of_bounds_is_refused_naming_it(open_store, vectors, kind, kw,
                                                                                  message):
    store = open_store(index=kind)
    store.upsert([Item(f"i{i}", v) for i, v in enumerate(vectors[0][:50])])
    with pytest.raises(InvalidItemError, match=message):
        store.search(vectors[1], k=3, **kw)
    with pytest.raises(InvalidItemError, match=message):
        store.search_grouped(vectors[1], k=3, group_by="label", **kw)


def test_an_ivf_gallery_not_yet_trained_takes_nprobe_and_searches_exactly(open_store, vectors):
    gallery, queries = vectors
    store = open_store(index="ivf")   # below its training threshold: flat
    store.upsert([Item(f"i{i}", v) for i, v in enumerate(gallery[:300])])
    truth = _brute_force(gallery[:300], queries, K)
    assert _recall(store.search(queries, k=K, nprobe=1), truth) == 1.0
    with pytest.raises(InvalidItemError, match="nprobe=20000 is more than 16384"):
        store.search(queries, k=K, nprobe=20_000)


def test_exact_on_a_flat_gallery_is_its_own_search(open_store, vectors):
    gallery, queries = vectors
    store = open_store()
    store.upsert([Item(f"i{i}", v) for i, v in enumerate(gallery[:500])])
    assert [[h.id for h in hits] for hits in store.search(queries, k=K, exact=True)] == \
        [[h.id for h in hits] for hits in store.search(queries, k=K)]


def test_grouped_searches_and_their_pages_take_the_parameters_as_plain_searches_do(open_store, vectors):
    import index

    gallery, queries = vectors
    store = _filled(open_store, "ivf", gallery, nprobe=1)
    for kw in ({"exact": True}, {"nprobe": 3}):
        grouped = store.search_grouped(queries[:8], k=2, group_by="label", group_size=3, **kw)
        assert grouped == index.search_grouped(lambda v, n: store.search(v, k=n, **kw), queries[:8], k=2,
                                               group_by="label", group_size=3)
    odd = np.arange(1, N, 2)
    # the next page of an exact search (search_hits: offset and exclude read more of the store's search)
    page = index.search_hits(store, queries[:4], K, exclude=["i1"], offset=K, label="odd", exact=True)
    for hits, (ids, _) in zip(page, _brute_force(gallery, queries[:4], 2 * K + 1, odd)):
        assert [h.id for h in hits] == [i for i in ids if i != "i1"][K:2 * K]


def test_nprobe_reaches_an_ivf_index_under_a_pre_transform(open_store, vectors):
    gallery, queries = vectors
    # PCA to as many dimensions as it has: a rotation, so probing every list is the exact answer
    store = _filled(open_store, "PCA32,IVF16,Flat", gallery)
    truth = _brute_force(gallery, queries, K)
    one, every = store.search(queries, k=K, nprobe=1), store.search(queries, k=K, nprobe=16)
    assert _recall(one, truth) < 0.9, "nprobe=1 probed every list"
    assert [[h.id for h in hits] for hits in every] == [ids for ids, _ in truth]
    # a filter's selector reaches it too, as do exact=True and the store's own nprobe
    odd = np.arange(1, N, 2)
    filtered = store.search(queries, k=K, label="odd", nprobe=16)
    assert [[h.id for h in hits] for hits in filtered] == [ids for ids, _ in _brute_force(gallery, queries, K, odd)]
    exact = store.search(queries, k=K, exact=True)
    assert [[h.id for h in hits] for hits in exact] == [ids for ids, _ in truth]
    store.close()
    own = open_store(index="PCA32,IVF16,Flat", nprobe=16)
    assert [[h.id for h in hits] for hits in own.search(queries, k=K)] == [ids for ids, _ in truth]
    own.close()
    assert _recall(open_store(index="PCA32,IVF16,Flat", nprobe=1).search(queries, k=K), truth) < 0.9


def test_ef_search_reaches_an_hnsw_index_under_a_pre_transform(open_store, vectors):
    gallery, queries = vectors
    store = _filled(open_store, "PCA32,HNSW32,Flat", gallery)
    truth = _brute_force(gallery, queries, K)
    assert _recall(store.search(queries, k=K, ef_search=K), truth) < _recall(
        store.search(queries, k=K, ef_search=512), truth)
