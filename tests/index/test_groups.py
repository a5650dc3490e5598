"""Grouped search over a real Store, both ways it is made: index.search_grouped over the store's search (what
MilvusStore runs) and Store.search_grouped from the FAISS ids. Either gives the k nearest groups (by label
or a metadata key), each with its nearest items, exactly what ranking every item by hand and walking down
the list gives; groups found however deep they lie; items without a value, and left-out ids, skipped."""
from __future__ import annotations

import numpy as np
import pytest

from index import InvalidItemError, Item, check_group_by, search_grouped, search_hits

from .conftest import unit


def _by_hand(vectors: np.ndarray, items: list[Item], q: np.ndarray, k: int, size: int, value,
             exclude=(), keep=lambda item, score: True) -> list[str]:
    """The answer from the definition: every item ranked by score, the groups in the order they first appear."""
    groups: dict[str, list[str]] = {}
    scores = vectors @ q
    for i in np.argsort(-scores, kind="stable"):
        item = items[i]
        v = value(item)
        if v is None or item.id in exclude or not keep(item, scores[i]):
            continue
        groups.setdefault(repr(v), []).append(item.id)
    return [i for members in list(groups.values())[:k] for i in members[:size]]


def _counting(store):
    calls = []

    def search(v, n, **filters):
        calls.append(n)
        return store.search(v, k=n, **filters)
    return search, calls


@pytest.fixture(params=["over search", "Store.search_grouped"])
def grouped(request):
    """grouped(store, queries, k, group_by, group_size, exclude=(), max_candidates=..., **filters): one way of
    the two, the same answer wanted of both."""
    def over_search(store, q, k, group_by, size=1, exclude=(), **kw):
        filters = {f: kw.pop(f) for f in ("label", "where", "max_distance") if f in kw}
        return search_grouped(lambda v, n: store.search(v, k=n, **filters), q, k, group_by, size, exclude, **kw)

    def in_store(store, q, k, group_by, size=1, exclude=(), **kw):
        return store.search_grouped(q, k, group_by, size, exclude, **kw)
    return over_search if request.param == "over search" else in_store


def test_groups_by_label_are_the_k_nearest_labels_each_with_its_nearest_items_however_deep(open_store, grouped):
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
        got = [h.id for h in grouped(store, q[None], k, "label", size)[0]]
        assert got == _by_hand(vectors, items, q, k, size, lambda it: it.label), (k, size)
    got = grouped(store, q[None], 20, "label", 2)[0]
    assert len({h.label for h in got}) == 11 and len(got) == 22   # every label there is, no more
    assert "i5" not in {h.id for h in got}


def test_a_group_whose_first_item_is_near_and_the_rest_far_is_read_on_until_it_holds_group_size(open_store, grouped):
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
    got = [h.id for h in grouped(store, q[None], 2, "label", 3)[0]]
    assert got == _by_hand(vectors, items, q, 2, 3, lambda it: it.label)
    assert got[:3] == ["i0", *[f"i{n}" for n in np.argsort(-(vectors[401:] @ q)) + 401][:2]]


def test_groups_by_a_metadata_key_compare_values_as_json_and_skip_items_without_the_key(open_store, grouped):
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

    got = grouped(store, q[None], 10, "metadata.year", 3)[0]
    assert [h.id for h in got] == _by_hand(vectors, items, q, 10, 3, key)
    assert len(got) == 6 * 3 and len({key(it) for it in items if key(it)}) == 6


def test_left_out_ids_are_skipped_and_plain_searches_ask_for_as_many_more(open_store, grouped):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 200)
    items = [Item(f"i{n}", v, label=f"c{n % 7}") for n, v in enumerate(vectors)]
    store = open_store()
    store.upsert(items)
    q = unit(rng, 1)[0]
    ranked = [f"i{n}" for n in np.argsort(-(vectors @ q))]
    exclude = ranked[:4]
    got = grouped(store, q[None], 5, "label", 2, exclude=exclude)[0]
    assert [h.id for h in got] == _by_hand(vectors, items, q, 5, 2, lambda it: it.label, set(exclude))
    plain = search_hits(store, q[None], 10, exclude=exclude)[0]
    assert [h.id for h in plain] == ranked[4:14]


def test_a_search_that_reads_at_most_max_candidates_returns_the_groups_found_there(open_store, grouped):
    rng = np.random.default_rng(3)
    vectors = unit(rng, 500)
    items = [Item(f"i{n}", v, label=f"c{n}") for n, v in enumerate(vectors)]   # every item its own label
    store = open_store()
    store.upsert(items)
    q = unit(rng, 1)[0]
    got = grouped(store, q[None], 300, "label", 1, max_candidates=100)[0]
    assert [h.id for h in got] == [f"i{n}" for n in np.argsort(-(vectors @ q))[:100]]


def test_a_group_by_that_is_not_label_or_a_metadata_key_is_a_value_error_naming_it():
    assert check_group_by("label") == "label" and check_group_by("metadata.a.b") == "metadata.a.b"
    for wrong in ("labels", "metadata.", "year", ""):
        with pytest.raises(ValueError, match="group_by=" + repr(wrong).replace(".", r"\.")):
            check_group_by(wrong)


def test_the_first_read_is_one_page_and_a_group_deeper_down_is_read_on_for(open_store):
    # (over the store's search: how many nearest items each read asks for)
    rng = np.random.default_rng(5)
    q = unit(rng, 1)[0]
    near = unit(rng, 600) * 0.3 + q
    vectors = np.concatenate([near, unit(rng, 5) - q]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_store()
    store.upsert([Item(f"i{n}", v, label="near" if n < 600 else "far") for n, v in enumerate(vectors)])
    search, calls = _counting(store)
    search_grouped(search, q[None], 1, "label", 3)
    assert calls == [64]   # one page held the nearest group's 3
    search, calls = _counting(store)
    got = search_grouped(search, q[None], 2, "label", 1)[0]
    assert calls == [64, 256, 1024] and [h.label for h in got] == ["near", "far"]


def test_filters_and_max_distance_apply_before_grouping_the_same_both_ways(open_store, grouped):
    rng = np.random.default_rng(6)
    vectors = unit(rng, 400)
    items = [Item(f"i{n}", v, label=f"c{n % 5}", metadata={"shop": n % 3, "product": n % 40})
             for n, v in enumerate(vectors)]
    store = open_store()
    store.upsert(items)
    q = unit(rng, 2)
    scores = np.sort(vectors @ q[0])[::-1]
    edge = float(np.sqrt(2 - 2 * scores[60]))   # the 61st nearest item's distance: about 60 items are in reach
    cases = [({"label": "c2"}, lambda it, s: it.label == "c2"),
             ({"where": {"shop": {"$in": [0, 2]}}}, lambda it, s: it.metadata["shop"] in (0, 2)),
             ({"max_distance": edge}, lambda it, s: np.sqrt(max(0.0, 2 - 2 * float(s))) <= edge),
             ({"label": "c1", "where": {"shop": 1}, "max_distance": 1.2},
              lambda it, s: it.label == "c1" and it.metadata["shop"] == 1 and np.sqrt(2 - 2 * float(s)) <= 1.2)]
    for filters, keep in cases:
        got = grouped(store, q, 6, "metadata.product", 2, exclude=["i3", "i7"], **filters)
        for row, qv in zip(got, q):
            want = _by_hand(vectors, items, qv, 6, 2, lambda it: it.metadata["product"], {"i3", "i7"}, keep)
            assert [h.id for h in row] == want, filters
        assert all(h.distance <= edge for h in got[0]) or "max_distance" not in filters


def test_store_grouped_hits_carry_scores_distances_labels_and_metadata_as_plain_hits_do(open_store):
    rng = np.random.default_rng(7)
    vectors = unit(rng, 50)
    store = open_store()
    store.upsert([Item(f"i{n}", v, label=f"c{n % 4}", metadata={"n": n, "deep": {"a": [n]}})
                  for n, v in enumerate(vectors)])
    q = unit(rng, 1)
    plain = {h.id: h for h in store.search(q, k=50)[0]}
    for hit in store.search_grouped(q, 4, "label", 3)[0]:
        assert hit == plain[hit.id]


def test_a_group_by_or_group_size_that_cannot_be_is_refused_by_the_store_naming_it(open_store, grouped):
    store = open_store()
    store.upsert([Item("a", unit(np.random.default_rng(8), 1)[0], label="x")])
    q = unit(np.random.default_rng(9), 1)
    with pytest.raises(ValueError, match="group_by='year'"):
        grouped(store, q, 3, "year")
    for size in (0, -1, True, 1.5):
        with pytest.raises(InvalidItemError, match=f"group_size must be a positive integer, got {size!r}"):
            grouped(store, q, 3, "label", size)


def test_a_group_first_seen_after_the_k_groups_is_left_out_while_they_fill(open_store, grouped):
    # nearest first: a1, b1, a2, b2, c1 ... ; k=1 group of 2 is a1 and a2, never b's
    rng = np.random.default_rng(10)
    q = unit(rng, 1)[0]
    other = unit(rng, 1)[0]
    vectors = np.stack([q + t * other for t in (0.1, 0.2, 0.3, 0.4, 0.5)]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_store()
    store.upsert([Item(i, v, label=i[0]) for i, v in zip(["a1", "b1", "a2", "b2", "c1"], vectors)])
    assert [h.id for h in grouped(store, q[None], 1, "label", 2)[0]] == ["a1", "a2"]
    assert [h.id for h in grouped(store, q[None], 2, "label", 2)[0]] == ["a1", "a2", "b1", "b2"]
    assert [h.id for h in grouped(store, q[None], 2, "label", 3)[0]] == ["a1", "a2", "b1", "b2"]


def test_search_hits_at_an_offset_gives_the_next_items_or_the_next_groups(open_store):
    rng = np.random.default_rng(11)
    vectors = unit(rng, 300)
    items = [Item(f"i{n}", v, label=f"c{n % 9}") for n, v in enumerate(vectors)]
    store = open_store()
    store.upsert(items)
    q = unit(rng, 2)
    for exclude in ([], ["i1", "i2", "i3"]):
        whole = search_hits(store, q, 300, exclude=exclude, where=None)
        for offset in (0, 7, 35, 299):
            page = search_hits(store, q, 10, exclude=exclude, offset=offset)
            assert [[h.id for h in row] for row in page] == [[h.id for h in row][offset:offset + 10] for row in whole]
    whole = search_hits(store, q, 8, group_by="label", group_size=2)
    page = search_hits(store, q, 3, group_by="label", group_size=2, offset=5)
    assert [[h.id for h in row] for row in page] == [[h.id for h in row][10:16] for row in whole]
    assert search_hits(store, q, 3, group_by="label", offset=9) == [[], []]   # 9 labels: none left


def test_best_of_merges_several_queries_hits_each_item_once_at_its_best_score():
    from index import Hit, best_of

    def hit(i, score):
        return Hit(i, score, float(np.sqrt(2 - 2 * score)), None, {})

    found = [[hit("a", 0.9), hit("b", 0.5), hit("c", 0.4)], [hit("c", 0.95), hit("a", 0.3)], []]
    assert [(h.id, h.score) for h in best_of(found, 3)] == [("c", 0.95), ("a", 0.9), ("b", 0.5)]
    assert [h.id for h in best_of(found, 5, offset=1)] == ["a", "b"]
