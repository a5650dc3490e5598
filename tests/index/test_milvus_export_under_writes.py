"""MilvusStore's filtered listing (list_positions with `where`, the export GET /index?where=... pages through a
gallery in Milvus) is never short while matching items remain, though a writer replaces and deletes items all
the while: the page's ids are chosen by one query and read by another, and one deleted in between is made up
for by the next matching ones."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from index import Item  # noqa: E402

from .conftest import unit  # noqa: E402
from .test_milvus import open_milvus  # noqa: E402,F401  (the fixture)

STABLE, CHURN, PAGE = 120, 60, 10


def test_a_filtered_export_from_milvus_under_writes_sees_every_item_there_throughout_once_and_no_short_page(
        open_milvus):  # noqa: F811
    vectors = unit(np.random.default_rng(4), STABLE + CHURN)
    store = open_milvus()
    store.upsert([Item(f"s{j}", vectors[j], None, {"k": 1}) if j % 3 else Item(f"c{j}", vectors[j], None, {"k": 1})
                  for j in range(STABLE + CHURN)])
    stable = {it.id for it in store.list(limit=1000) if it.id.startswith("s")}
    churn = [f"c{j}" for j in range(0, STABLE + CHURN, 3)]
    done, writes = threading.Event(), [0]

    def write() -> None:   # deletes a churning item and adds it back (a new, later position)
        pick = np.random.default_rng(5)
        while not done.is_set():
            writes[0] += 1
            id_ = churn[int(pick.integers(len(churn)))]
            store.delete([id_])
            store.upsert([Item(id_, vectors[0], None, {"k": 1})])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        exports = []
        while len(exports) < 5 or writes[0] < 100:   # exports enough, with writes enough among them
            seen, pages, after = [], [], None
            while len(pages) < 2_000:
                page = store.list_positions(limit=PAGE + 1, where={"k": 1}, after=after)   # as the route asks
                pages.append(len(page))
                seen += [it.id for _, it in page[:PAGE]]
                if len(page) <= PAGE:   # the route's "no next page"
                    break
                after = page[PAGE - 1][0]
            exports.append((seen, pages))
    finally:
        done.set()
        writer.join()
    for seen, pages in exports:
        assert all(n == PAGE + 1 for n in pages[:-1]), pages   # short only at the end
        assert sorted(i for i in seen if i.startswith("s")) == sorted(stable)   # each one, once


def test_a_filtered_page_from_milvus_refilled_under_writes_holds_an_id_once_its_later_version(
        open_milvus):  # noqa: F811
    store = open_milvus()
    vectors = unit(np.random.default_rng(7), 7)
    store.upsert([Item(f"i{j}", vectors[j], None, {"n": 1}) for j in range(5)])
    get_many, calls = store.get_many, []

    def get_many_under_writes(ids):   # what a writer does at the worst moment, made certain
        if calls:
            return get_many(ids)
        calls.append(ids)
        store.delete(["i1"])   # chosen, then deleted before the read: the page is refilled after it
        found = get_many(ids)
        store.upsert([Item("i0", vectors[5], None, {"n": 1, "v": 2})])   # read, then replaced: met by the refill
        return found

    store.get_many = get_many_under_writes
    page = store.list_positions(limit=5, where={"n": 1})
    assert [it.id for _, it in page] == ["i2", "i3", "i4", "i0"]
    assert page[-1][1].metadata == {"n": 1, "v": 2}
