"""pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces the `search` of every FAISS index class
with one that takes torch tensors but not FAISS's `params` keyword. Code in the same process that passes `params`
(index.Store's filtered searches, Milvus Lite's in-process IVF and HNSW searches) then fails with a TypeError.
Imported with `training`, before any pml import, this applies that patch once and gives each replaced search its
`params` back: a call with `params` goes to FAISS's own search (kept by the patch as `search_numpy`), one without to
the torch-aware one pml relies on."""
from __future__ import annotations

from typing import Any, Callable


def keep_faiss_params() -> None:
    """Apply faiss.contrib.torch_utils now (as pml would) with `params` accepted again; nothing without FAISS."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (the patch pml applies on import: applied here, then mended)
    except ImportError:
        return
    for cls in list(vars(faiss).values()):
        if not isinstance(cls, type):
            continue
        torch_search, numpy_search = cls.__dict__.get("search"), cls.__dict__.get("search_numpy")
        if numpy_search is not None and getattr(torch_search, "__name__", "") == "torch_replacement_search":
            cls.search = _search_taking_params(torch_search, numpy_search)


def _search_taking_params(torch_search: Callable, numpy_search: Callable) -> Callable:
    def search(self, x, k, *args: Any, params=None, **kwargs: Any):
        if params is not None:
            return numpy_search(self, x, k, *args, params=params, **kwargs)
        return torch_search(self, x, k, *args, **kwargs)

    search.__name__ = search.__qualname__ = "search_taking_params"
    return search
