"""Store.facets and MilvusStore.facets: how the items that match a filter spread over a label or a metadata
key's values, exactly what counting the items by hand gives, the same in both stores, and kept current
through writes."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from index import Facet, Item

from .conftest import unit

_YEARS = [2024, 2024.0, "2024", True, None, [1, 2], {"a": 1}, 2023, [2024, "x", "x", [2023]], [], [{"b": 1}]]


def _items(n: int = 120) -> list[Item]:
    vecs = unit(np.random.default_rng(5), n)
    out = []
    for i in range(n):
        meta = {"year": _YEARS[i % len(_YEARS)], "src": "phone" if i % 3 else "scan"} if i % 10 else {}
        out.append(Item(f"i{i}", vecs[i], None if i % 7 == 0 else f"c{i % 4}", meta))
    return out


def _by_hand(items: list[Item], field: str, keep) -> Facet:
    """The answer from the definition, over the items `keep` accepts."""
    chosen = [it for it in items if keep(it)]
    counts: Counter = Counter()
    missing = not_scalar = 0
    for it in chosen:
        if field == "label":
            value, has = it.label, it.label is not None
        else:
            key = field.split(".", 1)[1]
            value, has = it.metadata.get(key), key in it.metadata
        # a list counts under each distinct scalar element (not under those that are lists or objects)
        elements = {json.dumps(float(e) if type(e) in (int, float) else e)
                    for e in (value if isinstance(value, list) else []) if not isinstance(e, (list, dict))}
        if not has:
            missing += 1
        elif isinstance(value, dict) or (isinstance(value, list) and not elements):
            not_scalar += 1
        elif isinstance(value, list):
            counts.update(elements)
        else:   # JSON's equality: 2024 == 2024.0, "2024" and true apart
            counts[json.dumps(float(value) if type(value) in (int, float) else value)] += 1
    values = sorted(((json.loads(k), n) for k, n in counts.items()), key=lambda vn: (-vn[1], str(vn[0])))
    return Facet(field, len(chosen), values, missing, not_scalar)


def _same(got: Facet, want: Facet) -> bool:
    def norm(f):   # 2024 and 2024.0 print alike; the order of a tie is by the value's text, int or float
        return (f.field, f.items, f.missing, f.not_scalar,
                sorted((json.dumps(float(v) if type(v) in (int, float) else v), n) for v, n in f.values),
                [n for _, n in f.values])
    return norm(got) == norm(want)


CASES = [("label", {}, lambda it: True),
         ("metadata.year", {}, lambda it: True),
         ("metadata.src", {}, lambda it: True),
         ("metadata.year", {"label": "c1"}, lambda it: it.label == "c1"),
         ("label", {"where": {"src": "phone"}}, lambda it: it.metadata.get("src") == "phone"),
         ("metadata.nobody", {}, lambda it: True)]


@pytest.mark.parametrize("field,filters,keep", CASES)
def test_facets_count_what_counting_the_matching_items_by_hand_gives(open_store, field, filters, keep):
    items = _items()
    store = open_store()
    store.upsert(items)
    got = store.facets(field, **filters)
    assert _same(got, _by_hand(items, field, keep)), (got, _by_hand(items, field, keep))
    assert [n for _, n in got.values] == sorted((n for _, n in got.values), reverse=True)


def test_facets_follow_writes_and_a_field_that_is_not_one_is_a_value_error(open_store):
    items = _items()
    store = open_store()
    store.upsert(items)
    before = dict(store.facets("metadata.src").values)
    store.update("i1", metadata_patch={"src": "drone"})
    store.delete(["i2"])
    after = dict(store.facets("metadata.src").values)
    assert after["drone"] == 1 and after["phone"] == before["phone"] - 2   # i1 moved, i2 gone (both phone)
    assert store.facets("label").items == len(items) - 1
    with pytest.raises(ValueError, match="field='year'"):
        store.facets("year")

