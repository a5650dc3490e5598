"""index.refine_query: Rocchio's formula over stored vectors, a unit vector out, and a clear error when
nothing is left to search with."""
from __future__ import annotations

import numpy as np
import pytest

from index import LIKE_WEIGHT, UNLIKE_WEIGHT, refine_query

from .conftest import DIM


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_query_moves_towards_the_mean_of_the_liked_and_away_from_the_mean_of_the_unliked():
    rng = np.random.default_rng(0)
    q, like, unlike = _unit(rng, 1)[0], _unit(rng, 3), _unit(rng, 2)
    got = refine_query(q, like, unlike)
    want = q + LIKE_WEIGHT * like.mean(0) - UNLIKE_WEIGHT * unlike.mean(0)
    assert got.dtype == np.float32 and got.shape == q.shape
    assert np.allclose(got, want / np.linalg.norm(want), atol=1e-6)
    assert float(got @ like.mean(0)) > float(q @ like.mean(0))
    assert float(got @ unlike.mean(0)) < float(q @ unlike.mean(0))


def test_no_marks_leave_the_query_as_it_is_and_liked_items_alone_are_a_query():
    rng = np.random.default_rng(1)
    q, like = _unit(rng, 1)[0], _unit(rng, 2)
    none = np.zeros((0, 16), np.float32)
    assert np.allclose(refine_query(q, none, none), q, atol=1e-6)
    mean = like.mean(0)
    assert np.allclose(refine_query(None, like, none), mean / np.linalg.norm(mean), atol=1e-6)


def test_nothing_to_search_with_is_a_value_error_that_says_why():
    rng = np.random.default_rng(2)
    a = _unit(rng, 1)
    none = np.zeros((0, 16), np.float32)
    with pytest.raises(ValueError, match="nothing to search with"):
        refine_query(None, none, a)
    with pytest.raises(ValueError, match="cancel out"):   # a query that is exactly what the marks take away
        refine_query(-(LIKE_WEIGHT - UNLIKE_WEIGHT) * a[0], a, a)


def test_refined_queries_searched_with_the_marks_left_out_find_what_the_refined_vector_finds(open_store):
    from index import Item, refine_queries, search_hits

    rng = np.random.default_rng(3)
    store = open_store()
    vectors = _unit(rng, 30, DIM)
    store.upsert([Item(f"i{n}", v) for n, v in enumerate(vectors)])
    q = _unit(rng, 1, DIM)[0]
    like, unlike = ["i1", "i2"], ["i3"]
    refined = refine_queries(store, [q, None], like, unlike)
    want = refine_query(q, vectors[1:3], vectors[3:4])
    assert np.allclose(refined[0], want, atol=1e-6)
    got = search_hits(store, refined, 5, exclude=like + unlike + ["i4"])
    ranked = [f"i{n}" for n in np.argsort(-(vectors @ want))]
    assert [h.id for h in got[0]] == [i for i in ranked if i not in {"i1", "i2", "i3", "i4"}][:5]
    assert len(got[1]) == 5 and not {h.id for h in got[1]} & {"i1", "i2", "i3", "i4"}
    with pytest.raises(KeyError) as missing:
        refine_queries(store, [q], ["i1", "nope"], ["gone"])
    assert missing.value.args[0] == ["nope", "gone"]


def test_mean_query_is_the_unit_mean_of_several_photos_and_refuses_ones_that_cancel_out():
    from index import mean_query

    rng = np.random.default_rng(9)
    photos = _unit(rng, 3, DIM)
    mean = photos.mean(axis=0)
    assert np.allclose(mean_query(photos), mean / np.linalg.norm(mean), atol=1e-6)
    assert mean_query(photos).dtype == np.float32
    with pytest.raises(ValueError, match="the 2 images cancel out"):
        mean_query(np.stack([photos[0], -photos[0]]))
