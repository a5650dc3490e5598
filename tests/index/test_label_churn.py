"""A label no item holds any more is forgotten: a gallery whose items keep taking new labels (an SKU, an order id)
kept one entry for every label it ever held, in memory until a restart, and every facet count, info() and `$label`
filter with $ne/$nin walked them all (a soak: 200,000 relabelling writes of 500 items, RSS +72 MB and
/facets?field=label 2.8 -> 520 ms)."""
from __future__ import annotations

import numpy as np

from index import Item

from .conftest import unit


def test_labels_no_item_holds_are_forgotten_when_items_are_replaced_relabelled_or_deleted(open_store):
    rng = np.random.default_rng(5)
    store = open_store()
    vectors = unit(rng, 20)
    for round_ in range(30):   # each round gives every item a label of its own, never seen before
        store.upsert([Item(f"i{i}", vectors[i], f"r{round_}-{i}") for i in range(20)])
    for i in range(10):   # relabelled in place (PATCH /index/ID): the old label goes too
        store.update(f"i{i}", label=f"kept-{i % 2}")
    store.delete([f"i{i}" for i in range(10, 20)])
    held = {it.label for it in store.list(limit=100)}
    assert set(store.labels()) == held
    assert set(store._by_label) == held, f"{len(store._by_label)} labels kept for {len(held)} held"
    # what is left still filters as before
    some = sorted(held)[0]
    assert {it.id for it in store.list(limit=100, where={"$label": some})} == \
        {it.id for it in store.list(limit=100) if it.label == some}
    assert store.count(label=some) == len([it for it in store.list(limit=100) if it.label == some])
