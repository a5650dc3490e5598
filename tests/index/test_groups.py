"""index.search_grouped over a real Store: the k nearest groups (by label or a metadata key), each with its
nearest items, exactly what ranking every item by hand and walking down the list gives; groups found
however deep they lie; items without a value, and left-out ids, skipped."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item, check_group_by, search_grouped, search_hits

from .conftest import unit


def _by_hand(vectors: np.ndarray, items: list[Item], q: np.ndarray, k: int, size: int, value,
             exclude=()) -> list[str]:
    """The answer from the definition: every item ranked by score, the groups in the order they first appear."""
    groups: dict[str, list[str]] = {}
    for i in np.argsort(-(vectors @ q), kind="stable"):
        item = items[i]
        v = value(item)
        if v is None or item.id in exclude:
            continue
        groups.setdefault(repr(v), []).append(item.id)
    return [i for members in list(groups.values())[:k] for i in members[:size]]


def _counting(store):
    calls = []

    def search(v, n):
        calls.append(n)
        return store.search(v, k=n)
    return search, calls


def test_groups_by_label_are_the_k_nearest_labels_each_with_its_nearest_items_however_deep(open_store):
    rng = np.random.default_rng(0)
    q = unit(rng, 1)[0]
    # 1,500 items close to the query share 3 labels; 40 others, far from it, carry 8 labels more
    near = unit(rng, 1500) * 0.3 + q
    far = unit(rng, 40) - q
    vectors = np.concatenate([near, far]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [f"near{n % 3}" for n in range(1500)] + [f"far{n % 8}" for n in range(40)]
    items = [Item(f"i{n}", v, label=lb) for n, (v, lb) in enumerate(zip(vectors, labels))]
    items[5].label = None   # unlabelled: never in a group
    store = open_store()
    store.upsert(items)
    for k, size in [(3, 1), (3, 4), (6, 2), (11, 3), (20, 2)]:
        search, calls = _counting(store)
        got = [h.id for h in search_grouped(search, q[None], k, "label", size)[0]]
        assert got == _by_hand(vectors, items, q, k, size, lambda it: it.label), (k, size)
        if k > 3:   # the far labels lie past the first page read: it read on
            assert len(calls) > 1, calls
    got = search_grouped(lambda v, n: store.search(v, k=n), q[None], 20, "label", 2)[0]
    assert len({h.label for h in got}) == 11 and len(got) == 22   # every label there is, no more
    assert "i5" not in {h.id for h in got}


def test_a_group_whose_first_item_is_near_and_the_rest_far_is_read_on_until_it_holds_group_size(open_store):
    rng = np.random.default_rng(4)
    q = unit(rng, 1)[0]
    near = unit(rng, 400) * 0.3 + q
    far = unit(rng, 3) - q
    vectors = np.concatenate([q[None], near, far]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = ["rare"] + ["common"] * 400 + ["rare"] * 3   # the nearest item's group has its other items last
    items = [Item(f"i{n}", v, label=lb) for n, (v, lb) in enumerate(zip(vectors, labels))]
    store = open_store()
    store.upsert(items)
    got = [h.id for h in search_grouped(lambda v, n: store.search(v, k=n), q[None], 2, "label", 3)[0]]
    assert got == _by_hand(vectors, items, q, 2, 3, lambda it: it.label)
    assert got[:3] == ["i0", *[f"i{n}" for n in np.argsort(-(vectors[401:] @ q)) + 401][:2]]


def test_groups_by_a_metadata_key_compare_values_as_json_and_skip_items_without_the_key(open_store):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 300)
    values = [2024, 2024.0, "2024", True, 1, None, {"a": 1}, [1, 2]]
    items = []
    for n, v in enumerate(vectors):
        meta = {} if n % 9 == 0 else {"year": values[n % len(values)]}
        if meta.get("year") is None:
            meta = {}
        items.append(Item(f"i{n}", v, metadata=meta))
    store = open_store()
    store.upsert(items)
    q = unit(rng, 1)[0]

    def key(item):   # JSON equality: 2024 == 2024.0, but not "2024" nor true
        y = item.metadata.get("year")
        return None if y is None else (("n", float(y)) if type(y) in (int, float) else (type(y).__name__, repr(y)))

    got = search_grouped(lambda v, n: store.search(v, k=n), q[None], 10, "metadata.year", 3)[0]
    assert [h.id for h in got] == _by_hand(vectors, items, q, 10, 3, key)
    assert len(got) == 6 * 3 and len({key(it) for it in items if key(it)}) == 6


def test_left_out_ids_are_skipped_and_plain_searches_ask_for_as_many_more(open_store):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 200)
    items = [Item(f"i{n}", v, label=f"c{n % 7}") for n, v in enumerate(vectors)]
    store = open_store()
    store.upsert(items)
    q = unit(rng, 1)[0]
    ranked = [f"i{n}" for n in np.argsort(-(vectors @ q))]
    exclude = ranked[:4]
    got = search_grouped(lambda v, n: store.search(v, k=n), q[None], 5, "label", 2, exclude=exclude)[0]
    assert [h.id for h in got] == _by_hand(vectors, items, q, 5, 2, lambda it: it.label, set(exclude))
    plain = search_hits(lambda v, n: store.search(v, k=n), q[None], 10, exclude=exclude)[0]
    assert [h.id for h in plain] == ranked[4:14]


def test_a_search_that_reads_at_most_max_candidates_returns_the_groups_found_there(open_store):
    rng = np.random.default_rng(3)
    vectors = unit(rng, 500)
    items = [Item(f"i{n}", v, label=f"c{n}") for n, v in enumerate(vectors)]   # every item its own label
    store = open_store()
    store.upsert(items)
    q = unit(rng, 1)[0]
    got = search_grouped(lambda v, n: store.search(v, k=n), q[None], 300, "label", 1, max_candidates=100)[0]
    assert [h.id for h in got] == [f"i{n}" for n in np.argsort(-(vectors @ q))[:100]]


def test_a_group_by_that_is_not_label_or_a_metadata_key_is_a_value_error_naming_it():
    assert check_group_by("label") == "label" and check_group_by("metadata.a.b") == "metadata.a.b"
    for wrong in ("labels", "metadata.", "year", ""):
        with pytest.raises(ValueError, match="group_by=" + repr(wrong).replace(".", r"\.")):
            check_group_by(wrong)
