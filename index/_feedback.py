"""A query refined by gallery items a person marked: relevance feedback, Rocchio's formula.

After a first page of results a person marks some as what they want (`like`) and some as not
(`unlike`). Moving the query towards the mean of the liked vectors and away from the mean of the
unliked ones finds more of the wanted items on the next page than the next page of the first search
does (bench/bench_feedback.py; docs/index.md "More like these"). The weights are the ones that bench
chose for the two bundled CIFAR-10 models, on training images held out of the gallery.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._checks import check_list

LIKE_WEIGHT = 2.0
UNLIKE_WEIGHT = 1.0


def refine_query(query: np.ndarray | None, like: np.ndarray, unlike: np.ndarray, like_weight: float = LIKE_WEIGHT,
                 unlike_weight: float = UNLIKE_WEIGHT) -> np.ndarray:
    """The unit vector to search with: query + like_weight * mean(like) - unlike_weight * mean(unlike).

    query: a unit (dim,) vector, or None to search by the examples alone ("more like these").
    like, unlike: (n, dim) stored vectors, either may have no rows. ValueError, saying why, when there
    is nothing to search with: no query and no liked item, or parts that cancel out.
    """
    parts = []
    if query is not None:
        parts.append(np.asarray(query, dtype=np.float64).reshape(-1))
    if len(like):
        parts.append(like_weight * np.asarray(like, dtype=np.float64).mean(axis=0))
    if not parts:
        raise ValueError("nothing to search with: give a query image or vector, or at least one liked item "
                         "(unliked items only say what to move away from)")
    if len(unlike):
        parts.append(-unlike_weight * np.asarray(unlike, dtype=np.float64).mean(axis=0))
    vector = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("the query and the marked items cancel out: nothing is left to search with")
    return (vector / norm).astype(np.float32)


def mean_query(vectors: np.ndarray) -> np.ndarray:
    """The unit mean of (n, dim) query vectors: the one query several photos of a thing make (the service's
    several `file` parts, `simsearch search --together`). ValueError when they cancel out."""
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"the {len(vectors)} images cancel out: their mean is no direction to search in")
    return (mean / norm).astype(np.float32)


def refine_queries(store, queries: Sequence[np.ndarray | None], like: list[str], unlike: list[str]) -> np.ndarray:
    """(n, dim) unit rows: each query (a unit vector, or None: the marks alone) refined by the stored vectors
    of the items `like` and `unlike` (refine_query). KeyError, with the list of ids, for marked items the
    store does not hold; ValueError from refine_query when a query has nothing left to search with."""
    marked = list(check_list(like, "like=")) + list(check_list(unlike, "unlike="))
    items = store.get_many(marked)
    missing = [i for i, item in zip(marked, items) if item is None]
    if missing:
        raise KeyError(missing)
    vectors = np.stack([item.vector for item in items]) if items else np.zeros((0, 0), np.float32)
    return np.stack([refine_query(q, vectors[:len(like)], vectors[len(like):]) for q in queries])
