"""Look-alike pairs in a gallery: copies, near-copies (a re-encoded or resized file) and one picture stored
under two labels. Every item is searched with its own stored vector; the pairs at least `min_score` alike
are kept, each once. `simsearch index duplicates` and the service's GET /duplicates both use it (docs/index.md
"Look-alikes and copies")."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._errors import InvalidItemError

_PAGE = 1024   # items searched at once


def find_duplicates(store, min_score: float = 0.98, k: int = 5,
                    progress: Callable[[int], None] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(items read, pairs): each pair {score, a, b, label_a, label_b, labels_differ} once, its ids in order,
    the most alike first (then by ids). `k` nearest items are looked at for each item, so an item with more
    than `k` look-alikes has its further pairs found from the other side only. `progress(n)` is told the
    items read after each page. Reads only: items written meanwhile may be missed."""
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 < min_score <= 1:
        raise InvalidItemError(f"min_score is a cosine in (0, 1], got {min_score!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise InvalidItemError(f"k must be 1..1000, got {k!r}")
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    items = 0
    while True:
        page = store.list(items, _PAGE)
        if not page:
            break
        items += len(page)
        found = store.search(np.stack([it.vector for it in page]), k=k + 1)   # + 1: the item itself
        for item, hits in zip(page, found):
            for h in hits:
                if h.id == item.id or h.score < min_score:
                    continue
                (a, la), (b, lb) = sorted([(item.id, item.label), (h.id, h.label)], key=lambda p: p[0])
                pairs.setdefault((a, b), {"score": min(1.0, h.score), "a": a, "b": b, "label_a": la, "label_b": lb,
                                          "labels_differ": la != lb})
        if progress is not None:
            progress(items)
    return items, sorted(pairs.values(), key=lambda p: (-p["score"], p["a"], p["b"]))
