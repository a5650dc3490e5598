"""A filtered listing (list_positions with `where`, the export GET /index?where=... pages through) is never
short while matching items remain, though a writer replaces and deletes items all the while: the page's rows
are read from the database after they were chosen, and one replaced or deleted in between is made up for by
the next matching ones."""
from __future__ import annotations

import threading

import numpy as np

from index import Item

from .conftest import unit

STABLE, CHURN, PAGE = 600, 300, 25


def test_a_filtered_export_under_writes_sees_every_item_there_throughout_once_and_no_short_page_before_its_end(
        open_store):
    rng = np.random.default_rng(4)
    vectors = unit(rng, STABLE + CHURN)
    store = open_store()
    # interleaved, so that the items a writer replaces or deletes are spread through every page
    store.upsert([Item(f"s{j}", vectors[j], None, {"k": 1}) if j % 3 else Item(f"c{j}", vectors[j], None, {"k": 1})
                  for j in range(STABLE + CHURN)])
    stable = {it.id for it in store.list(limit=1000) if it.id.startswith("s")}
    churn = [f"c{j}" for j in range(0, STABLE + CHURN, 3)]
    done, writes = threading.Event(), [0]

    def write() -> None:   # replaces (a new, later position) and deletes then adds back the churning items
        pick = np.random.default_rng(5)
        while not done.is_set():
            writes[0] += 1
            id_ = churn[int(pick.integers(len(churn)))]
            if pick.random() < 0.7:
                store.upsert([Item(id_, vectors[0], None, {"k": 1})])
            else:
                store.delete([id_])
                store.upsert([Item(id_, vectors[0], None, {"k": 1})])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        exports = []
        while len(exports) < 20 or writes[0] < 500:   # exports enough, with writes enough among them
            seen, pages, after = [], [], None
            while len(pages) < 10_000:
                page = store.list_positions(limit=PAGE + 1, where={"k": 1}, after=after)   # as the route asks
                pages.append(len(page))
                assert len({it.id for _, it in page}) == len(page), [it.id for _, it in page]   # an id once a page
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
    assert store.count(where={"k": 1}) == STABLE + CHURN


def test_a_filtered_page_with_an_offset_skips_it_once(open_store):
    store = open_store()
    store.upsert([Item(f"i{j}", v, None, {"k": j % 2}) for j, v in enumerate(unit(np.random.default_rng(6), 20))])
    page = store.list_positions(offset=2, limit=3, where={"k": 0})
    assert [it.id for _, it in page] == ["i4", "i6", "i8"]
    after = page[-1][0]
    assert [it.id for _, it in store.list_positions(offset=1, limit=3, where={"k": 0}, after=after)] == \
        ["i12", "i14", "i16"]


class _WritesWhileReading:
    """The store's read connection, with writes made by the store itself around the first read of a page's rows
    (the moment between choosing them and reading them, and right after): what a writer thread does at the
    worst moment, made certain."""

    def __init__(self, conn, before, after):
        self._conn, self._before, self._after = conn, before, after

    def execute(self, sql, args=()):
        if "seq IN" not in sql or self._before is None:
            return self._conn.execute(sql, args)
        before, after, self._before = self._before, self._after, None
        before()
        rows = self._conn.execute(sql, args).fetchall()
        after()
        return _Rows(rows)

    def __getattr__(self, name):
        return getattr(self._conn, name)


class _Rows:
    def __init__(self, rows):
        self._rows = rows

    def fetchall(self):
        return self._rows


def test_a_filtered_page_refilled_under_writes_holds_an_id_once_its_later_version(open_store):
    store = open_store()
    vectors = unit(np.random.default_rng(7), 7)
    store.upsert([Item(f"i{j}", vectors[j], None, {"n": 1}) for j in range(5)])
    read_conn = store._read_conn
    # i1 deleted after the page was chosen (the page is refilled from the rows after it), and i0, already read,
    # replaced right after the read (its new version is among the rows the refill reads)
    wrapped = _WritesWhileReading(read_conn(), lambda: store.delete(["i1"]),
                                  lambda: store.upsert([Item("i0", vectors[5], None, {"n": 1, "v": 2})]))
    store._read_conn = lambda: wrapped
    page = store.list_positions(limit=5, where={"n": 1})
    store._read_conn = read_conn
    assert [it.id for _, it in page] == ["i2", "i3", "i4", "i0"]
    assert page[-1][1].metadata == {"n": 1, "v": 2}   # the later version
    assert [pos for pos, _ in page] == sorted(pos for pos, _ in page)
