"""Filters on metadata keys that hold lists (docs/index.md "Filters"): a condition matches a list when any of
its scalar elements matches (MongoDB's rule; $ne and $nin when none does), the same in the FAISS store and
in Milvus, through search (each of the FAISS store's paths), count, list, facets and every write."""
from __future__ import annotations

import numpy as np
import pytest

from index import Item

from .conftest import DIM, unit

MODEL = "test-model@000000000000"


@pytest.fixture(params=["faiss", "milvus"])
def open_any(request, open_store, tmp_path):
    """open_any(**config) -> a Store, or a MilvusStore on a Milvus Lite file (skipped without pymilvus)."""
    if request.param == "faiss":
        yield open_store
        return
    pytest.importorskip("pymilvus")
    from index import MilvusConfig, MilvusStore

    opened = []

    def _open(**kw):
        kw.pop("train_threshold", None)
        kw.setdefault("uri", str(tmp_path / "milvus.db"))
        store = MilvusStore.open(MilvusConfig(dim=DIM, model_id=MODEL, **kw))
        opened.append(store)
        return store

    yield _open
    for s in opened:
        s.close()


def _same(a, b) -> bool:
    """JSON equality: numbers by value, never a bool or a string."""
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return (num(a) and num(b) and a == b) or (type(a) is type(b) and not num(a) and a == b)


def _comparable(v, x) -> bool:
    if isinstance(x, str):
        return isinstance(v, str)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_HOLDS = {"$eq": lambda v, x: _same(v, x), "$in": lambda v, x: any(_same(v, y) for y in x),
          "$gt": lambda v, x: _comparable(v, x) and v > x, "$gte": lambda v, x: _comparable(v, x) and v >= x,
          "$lt": lambda v, x: _comparable(v, x) and v < x, "$lte": lambda v, x: _comparable(v, x) and v <= x}


def reference(meta: dict, where: dict) -> bool:
    """What each operator means, item by item, lists included: a value is its own candidates, a list its
    scalar elements (not those that are lists or objects); $eq, $in and each range bound hold when some
    candidate holds them, $ne and $nin when none holds their $eq or $in."""
    for key, cond in where.items():
        if key in ("$or", "$and"):
            if not (any if key == "$or" else all)(reference(meta, sub) for sub in cond):
                return False
            continue
        has, v = key in meta, meta.get(key)
        candidates = [] if not has else [e for e in v if not isinstance(e, (list, dict))] if isinstance(v, list) \
            else [] if isinstance(v, dict) else [v]
        for op, x in (cond if isinstance(cond, dict) else {"$eq": cond}).items():
            if op == "$exists":
                ok = has == x
            elif op in ("$ne", "$nin"):
                ok = not any(_HOLDS["$eq" if op == "$ne" else "$in"](c, x) for c in candidates)
            else:
                ok = any(_HOLDS[op](c, x) for c in candidates)
            if not ok:
                return False
    return True


_METAS = [{"tags": ["red", "blue"]}, {"tags": "red"}, {"tags": []}, {"tags": [["red"], {"red": 1}]},
          {"tags": [1, 5.0, "x", True, None]}, {"tags": 3}, {}, {"tags": ["blue", "blue"]}, {"tags": {"c": "red"}},
          {"tags": [2020, "2021-06"]}]


@pytest.mark.parametrize("where, want", [
    ({"tags": "red"}, [0, 1]),                                  # any element, or the value itself
    ({"tags": {"$eq": "blue"}}, [0, 7]),
    ({"tags": {"$in": ["blue", 3]}}, [0, 5, 7]),
    ({"tags": {"$ne": "red"}}, [2, 3, 4, 5, 6, 7, 8, 9]),      # no element is: missing, empty, nested too
    ({"tags": {"$nin": ["red", 5]}}, [2, 3, 5, 6, 7, 8, 9]),
    ({"tags": {"$exists": True}}, [0, 1, 2, 3, 4, 5, 7, 8, 9]),
    ({"tags": {"$exists": False}}, [6]),
    ({"tags": 5}, [4]), ({"tags": 1.0}, [4]), ({"tags": True}, [4]), ({"tags": None}, [4]),   # JSON's types
    ({"tags": {"$ne": None}}, [0, 1, 2, 3, 5, 6, 7, 8, 9]),
    ({"tags": {"$gt": 4}}, [4, 9]), ({"tags": {"$lt": 2}}, [4]),
    ({"tags": {"$gt": 2, "$lt": 4}}, [4, 5]),                  # 5 > 2 and 1 < 4: each bound by any element
    ({"tags": {"$gte": 2000, "$lte": 2030}}, [9]),
    ({"tags": {"$gte": "b", "$lt": "s"}}, [0, 1, 7]),            # strings with strings
    ({"tags": {"$gte": "2021", "$lt": "2022"}}, [9]),
    ({"$or": [{"tags": "blue"}, {"tags": 3}]}, [0, 5, 7]),
    ({"tags": "red", "$and": [{"tags": "blue"}]}, [0]),
    ({"tags": {"$in": ["x", "y"]}}, [4]),
])
def test_each_operator_matches_any_scalar_element_of_a_list(open_any, where, want):
    store = open_any()
    vecs = unit(np.random.default_rng(3), len(_METAS))
    store.upsert([Item(f"t{i}", vecs[i], None, m) for i, m in enumerate(_METAS)])
    assert [i for i, m in enumerate(_METAS) if reference(m, where)] == want   # the test's own reading
    ids = [f"t{i}" for i in want]
    assert sorted(h.id for h in store.search(vecs[0], k=20, where=where)[0]) == ids
    assert store.count(where=where) == len(ids) and [it.id for it in store.list(where=where)] == ids


_VALUES = [1, 1.0, 2, -3.5, 2020, "1", "x", "y", "2020-06-30", 'q"uote', "", True, False, None, {"o": 1}]


def _random_value(rng: np.random.Generator):
    if rng.random() < 0.5:
        return [_VALUES[rng.integers(len(_VALUES))] if rng.random() < 0.9 else [1] for _ in range(rng.integers(4))]
    return _VALUES[rng.integers(len(_VALUES))]


def random_condition(rng: np.random.Generator, scalars: list, keys: int, depth: int = 0,
                     labels: list[str] | None = None) -> dict:
    """A random filter on the keys k0..k{keys-1}: each operator, with values drawn from `scalars`, and $or/$and of
    such (two deep at most). test_milvus draws its filters with it too. With `labels`, a third of the conditions
    are on "$label" instead, each operator with values drawn from `labels` (a label is a string: no other values)."""
    key, values = f"k{rng.integers(keys)}", scalars
    if labels is not None and rng.random() < 1 / 3:
        key, values = "$label", labels
    pick = lambda: values[rng.integers(len(values))]  # noqa: E731
    op = rng.integers(9 if depth < 2 else 7)
    if op < 2:
        return {key: pick()} if op == 0 else {key: {"$ne": pick()}}
    if op < 4:
        return {key: {"$in" if op == 2 else "$nin": [pick() for _ in range(rng.integers(1, 4))]}}
    if op == 4:
        return {key: {"$exists": bool(rng.integers(2))}}
    if op == 5 and key == "$label":
        low, high = sorted([pick(), pick()])
        return {key: {"$gte" if rng.integers(2) else "$gt": low, "$lte" if rng.integers(2) else "$lt": high}}
    if op == 5:
        low, high = sorted([float(rng.integers(-5, 2030)), float(rng.integers(-5, 2030))])
        return {key: {"$gte" if rng.integers(2) else "$gt": low, "$lte" if rng.integers(2) else "$lt": high}}
    if op == 6:
        return {key: {"$gt" if rng.integers(2) else "$lte": ["1", "x", "2020", "é"][rng.integers(4)]}}
    return {"$or" if op == 7 else "$and": [random_condition(rng, scalars, keys, depth + 1, labels)
                                           for _ in range(rng.integers(1, 4))]}


def random_where(rng: np.random.Generator, scalars: list, keys: int, labels: list[str] | None = None) -> dict:
    """A random filter of one or two random_condition's, merged as a `where` takes them (with `labels`: some on
    "$label", see random_condition)."""
    where: dict = {}
    for _ in range(rng.integers(1, 3)):
        where.update(random_condition(rng, scalars, keys, labels=labels))
    return where


def test_random_filters_over_lists_select_what_the_reference_says(open_any):
    rng = np.random.default_rng(11)
    metas = [{f"k{k}": _random_value(rng) for k in range(2) if rng.random() < 0.8} for _ in range(200)]
    vecs = unit(rng, len(metas))
    store = open_any()
    store.upsert([Item(f"m{i:03d}", vecs[i], None, m) for i, m in enumerate(metas)])
    told_apart = 0
    for _ in range(120):
        where = random_where(rng, _VALUES[:-1], keys=2)   # scalars only
        want = [f"m{i:03d}" for i, m in enumerate(metas) if reference(m, where)]
        assert [it.id for it in store.list(limit=1000, where=where)] == want, where
        told_apart += 0 < len(want) < len(metas)
    assert told_apart > 50


_COLOURS = ["red", "green", "blue", "white", "black"]


def _tagged(n: int, rng: np.random.Generator) -> list[dict]:
    return [{"tags": [c for c in _COLOURS if rng.random() < 0.3]} for _ in range(n)]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_filtered_search_returns_the_nearest_items_whose_tags_hold_the_value(open_store, kind):
    rng = np.random.default_rng(17)
    store = open_store(index=kind, train_threshold=500)
    vecs = unit(rng, 3000)
    metas = _tagged(3000, rng)
    metas[7]["tags"].append("rare")
    store.upsert([Item(f"r{i}", vecs[i], None, m) for i, m in enumerate(metas)])
    # one query (FAISS's selector), then a batch (for the wide filters: the broad BLAS path of the exact index)
    for q in (unit(rng, 1), unit(rng, 12)):
        for where in ({"tags": "red"}, {"tags": {"$in": ["green", "rare"]}}, {"tags": "rare"},
                      {"tags": {"$nin": ["red", "blue"]}}, {"tags": {"$ne": "white"}}):
            match = np.array([i for i, m in enumerate(metas) if reference(m, where)])
            assert store.count(where=where) == len(match)
            for row, hits in enumerate(store.search(q, k=10, where=where)):
                best = match[np.argsort(-(vecs[match] @ q[row]), kind="stable")[:10]]
                if kind == "flat":   # exact: the very same list
                    assert [h.id for h in hits] == [f"r{i}" for i in best], (where, row)
                else:   # approximate: as many hits as can be, all matching
                    assert len(hits) == min(10, len(match)) and {h.id for h in hits} <= {f"r{i}" for i in match}


def test_a_filtered_search_in_either_store_returns_the_nearest_items_whose_tags_hold_the_value(open_any):
    rng = np.random.default_rng(19)
    store = open_any()
    vecs = unit(rng, 400)
    metas = _tagged(400, rng)
    store.upsert([Item(f"r{i}", vecs[i], None, m) for i, m in enumerate(metas)])
    q = unit(rng, 3)
    for where in ({"tags": "red"}, {"tags": {"$in": ["green", "black"]}}, {"tags": {"$nin": ["red", "blue"]}}):
        match = np.array([i for i, m in enumerate(metas) if reference(m, where)])
        for row, hits in enumerate(store.search(q, k=10, where=where)):
            best = match[np.argsort(-(vecs[match] @ q[row]), kind="stable")[:10]]
            assert [h.id for h in hits] == [f"r{i}" for i in best], (where, row)


def test_writes_move_an_item_in_and_out_of_a_list_match(open_any):
    store = open_any()
    vecs = unit(np.random.default_rng(23), 4)
    store.upsert([Item("a", vecs[0], None, {"tags": ["red", "blue"]}), Item("b", vecs[1], None, {"tags": ["blue"]}),
                  Item("c", vecs[2], None, {"tags": "red"})])

    def red():
        return [it.id for it in store.list(where={"tags": "red"})], store.count(where={"tags": {"$ne": "red"}})

    assert red() == (["a", "c"], 1)   # the first filter on the key builds its index; every write after keeps it
    store.update("b", metadata_patch={"tags": ["green", "red"]})          # into it, by an edit
    assert red() == (["a", "b", "c"], 0)
    store.update("a", metadata_patch={"tags": ["blue"]})                  # out of it, blue kept
    assert red() == (["b", "c"], 1) and [it.id for it in store.list(where={"tags": "blue"})] == ["a"]
    store.update("b", metadata_patch={"tags": None})                      # the key gone
    assert red() == (["c"], 2) and store.count(where={"tags": {"$exists": True}}) == 2
    store.upsert([Item("c", vecs[2], None, {"tags": ["red", "red"]}), Item("d", vecs[3], None, {"tags": ["red"]})])
    assert red() == (["c", "d"], 2)                                      # a replaced item and a new one
    store.delete(["c"])
    assert red() == (["d"], 2)
    assert store.count(where={"tags": {"$gte": "r"}}) == 1 and store.count(where={"tags": {"$lt": "c"}}) == 1
    facet = store.facets("metadata.tags")
    assert (facet.items, sorted(facet.values), facet.missing, facet.not_scalar) == (3, [("blue", 1), ("red", 1)], 1, 0)
