"""The Milvus store (index.MilvusStore) against a real Milvus: Milvus Lite, in this process (a file) or as
its own server process. It must answer as the FAISS store does: the same filters select the same items,
the same searches find the same neighbours, the same bad input is refused, and what it acknowledged
survives the Milvus server being killed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus")

import index  # noqa: E402
from index import InvalidItemError, Item, MilvusConfig, MilvusStore  # noqa: E402
from index._milvus import _gallery_of, collection_name, match_fields, where_expression  # noqa: E402

from ..app.conftest import free_port  # noqa: E402
from .conftest import DIM, unit  # noqa: E402
from .test_facets import CASES, _by_hand, _items, _same  # noqa: E402
from .test_list_filters import random_where  # noqa: E402
from .test_list_filters import reference as _reference  # noqa: E402  (lists: any element matches)
from .test_store import _OPS_METAS, check_paging_after_a_position  # noqa: E402

MODEL = "test-model@000000000000"


@pytest.fixture
def open_milvus(tmp_path):
    """open_milvus(**config) -> a MilvusStore on a Milvus Lite file in tmp_path (closed at teardown)."""
    opened: list[MilvusStore] = []

    def _open(**kw) -> MilvusStore:
        kw.setdefault("uri", str(tmp_path / "milvus.db"))
        kw.setdefault("dim", DIM)
        kw.setdefault("model_id", MODEL)
        store = MilvusStore.open(MilvusConfig(**kw))
        opened.append(store)
        return store

    yield _open
    for s in opened:
        s.close()


def test_items_round_trip_with_normalised_vectors_labels_metadata_and_thumbnails(open_milvus):
    store = open_milvus()
    v = np.arange(1, DIM + 1, dtype=np.float32)
    meta = {"year": 2020, "ratio": 1.0, "tags": ["a", "b"], "deep": {"x": None}, "quote": 'say "hi"\\'}
    assert store.upsert([Item("a/1.jpg", v, "cat", meta, b"\xff\xd8jpeg"), Item("b", -v)]) == 2
    got = store.get("a/1.jpg")
    assert np.allclose(got.vector, v / np.linalg.norm(v), atol=1e-6) and got.label == "cat"
    assert json.dumps(got.metadata) == json.dumps(meta)   # as stored: 1.0 stays 1.0, key order kept
    assert store.thumbnail("a/1.jpg") == b"\xff\xd8jpeg" and store.thumbnail("b") is None
    assert [it.id if it else None for it in store.get_many(["b", "zz", "a/1.jpg"])] == ["b", None, "a/1.jpg"]
    assert store.has_ids(["b", "zz"]) == {"b"} and store.count() == 2 and store.labels() == {None: 1, "cat": 1}


def test_replacing_an_item_moves_it_to_the_end_and_editing_keeps_its_place(open_milvus):
    store = open_milvus()
    vecs = unit(np.random.default_rng(1), 4)
    store.upsert([Item(f"i{j}", vecs[j], "x", {"n": j}, b"t%d" % j) for j in range(4)])
    store.upsert([Item("i1", vecs[1], "y", {"n": 10})])
    assert [it.id for it in store.list()] == ["i0", "i2", "i3", "i1"]
    edited = store.update("i2", metadata_patch={"n": None, "new": True})
    assert edited.metadata == {"new": True} and edited.label == "x"
    assert store.update("i0", label=None).label is None and store.thumbnail("i0") == b"t0"
    assert [it.id for it in store.list()] == ["i0", "i2", "i3", "i1"]
    assert [it.id for it in store.list(offset=1, limit=2)] == ["i2", "i3"]
    assert store.count(label="x") == 2 and store.count(where={"new": True}) == 1
    with pytest.raises(KeyError):
        store.update("nope", label="z")


def test_deletes_return_what_existed_and_delete_where_removes_exactly_the_matching_items(open_milvus):
    store = open_milvus()
    vecs = unit(np.random.default_rng(2), 6)
    store.upsert([Item(f"i{j}", vecs[j], "odd" if j % 2 else "even", {"j": j}) for j in range(6)])
    assert store.delete(["i0", "nope", "i0"]) == ["i0"]
    assert sorted(store.delete_where(label="odd", where={"j": {"$gte": 3}})) == ["i3", "i5"]
    assert sorted(it.id for it in store.list()) == ["i1", "i2", "i4"]
    with pytest.raises(InvalidItemError, match="needs a label or a where"):
        store.delete_where()


def test_search_finds_the_exact_nearest_items_as_the_faiss_store_does(open_milvus, open_store):
    rng = np.random.default_rng(3)
    vecs, queries = unit(rng, 500), unit(rng, 20)
    items = [Item(f"i{j}", vecs[j], f"c{j % 5}", {"j": j}) for j in range(500)]
    milvus, faiss_store = open_milvus(), open_store()
    milvus.upsert(items)
    faiss_store.upsert(items)
    for kw in ({}, {"label": "c2"}, {"where": {"j": {"$lt": 100}}}, {"max_distance": 1.2}):
        got, want = milvus.search(queries, k=7, **kw), faiss_store.search(queries, k=7, **kw)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want], kw
        assert np.allclose([h.score for row in got for h in row], [h.score for row in want for h in row], atol=1e-5)
    assert [h.id for h in milvus.search_by_id("i7", k=5)] == [h.id for h in faiss_store.search_by_id("i7", k=5)]
    assert "i7" not in [h.id for h in milvus.search_by_id("i7", k=50)] and len(milvus.search_by_id("i7", k=50)) == 50
    odd = Item('odd\x01"id', vecs[7] + 1e-3)   # an id no Milvus literal can hold
    milvus.upsert([odd])
    faiss_store.upsert([odd])
    assert [h.id for h in milvus.search_by_id(odd.id, k=3)] == [h.id for h in faiss_store.search_by_id(odd.id, k=3)]
    assert milvus.search_by_id(odd.id, k=3)[0].id == "i7"
    hit = milvus.search(vecs[4], k=1)[0][0]
    assert (hit.id, hit.label, hit.metadata) == ("i4", "c4", {"j": 4}) and hit.score == pytest.approx(1, abs=1e-5)


def test_copies_of_one_photo_page_in_the_order_they_were_added_as_in_the_faiss_store(open_milvus, open_store):
    rng = np.random.default_rng(12)
    copy, others = unit(rng, 1)[0], unit(rng, 200)
    items = ([Item(f"o{j}", others[j], "other") for j in range(200)]
             + [Item(f"copy{i:02d}", copy, "copy", {"n": i}) for i in range(12)])
    milvus, faiss_store = open_milvus(), open_store()
    for store in (milvus, faiss_store):
        for start in range(0, len(items), 50):   # in batches: the order of adding is the order of the batches
            store.upsert(items[start:start + 50])
    query = (copy + 0.3 * unit(rng, 1)[0])[None].astype(np.float32)
    every = [h.id for h in milvus.search(query, k=12)[0]]
    assert every == [f"copy{i:02d}" for i in range(12)] == [h.id for h in faiss_store.search(query, k=12)[0]]
    for filters in ({}, {"label": "copy"}):
        pages = [h.id for o in range(0, 12, 3) for h in index.search_hits(milvus, query, 3, offset=o, **filters)[0]]
        assert pages == every, filters
    assert [h.id for h in milvus.search_by_id("copy03", k=4)] == ["copy00", "copy01", "copy02", "copy04"]


@pytest.mark.parametrize("where", [w for w, _ in [
    ({"year": {"$gte": 2020}}, 0), ({"year": {"$in": [2019, "2020", True]}}, 0), ({"src": {"$ne": "phone"}}, 0),
    ({"tags": {"$ne": "x"}}, 0), ({"nobody": {"$ne": 1}}, 0), ({"src": {"$in": ["phone", None], "$ne": None}}, 0),
    ({"$or": [{"src": {"$ne": "phone"}}, {"year": 2021}]}, 0),
    ({"$and": [{"$or": [{"year": 2020}, {"year": 2021}]}, {"$or": [{"src": "phone"}, {"day": {"$lt": "2021"}}]}]}, 0)]])
def test_the_faiss_stores_filter_cases_select_the_same_items(open_milvus, where):
    store = open_milvus()
    vecs = unit(np.random.default_rng(12), len(_OPS_METAS))
    store.upsert([Item(f"o{i}", vecs[i], None, m) for i, m in enumerate(_OPS_METAS)])
    want = [f"o{i}" for i, m in enumerate(_OPS_METAS) if _reference(m, where)]
    assert sorted(h.id for h in store.search(vecs[0], k=10, where=where)[0]) == want
    assert store.count(where=where) == len(want) and [it.id for it in store.list(where=where)] == want


_VALUES = [1, 1.0, 2, -3.5, 2020, "1", "x", "y", "2020-06-30", 'q"uote', "back\\slash", "é✓", "", True, False, None,
           [1], {"o": 1}]


def test_random_filters_select_the_same_items_in_milvus_as_the_reference_and_the_faiss_store(open_milvus, open_store):
    """Milvus's own JSON comparisons take true for 1 and a null value for a missing key; the store's
    typed `match` fields must give the FAISS store's answers (docs/index.md "Filters") on every value."""
    rng = np.random.default_rng(7)
    metas = []
    for _ in range(240):
        metas.append({f"k{k}": _VALUES[rng.integers(len(_VALUES))] for k in range(3) if rng.random() < 0.7})
    vecs = unit(rng, len(metas))
    items = [Item(f"m{i:03d}", vecs[i], None, m) for i, m in enumerate(metas)]
    milvus, faiss_store = open_milvus(), open_store()
    milvus.upsert(items)
    faiss_store.upsert(items)
    nonempty = 0
    for _ in range(150):
        where = random_where(rng, _VALUES[:-2], keys=3)   # scalars only
        want = [f"m{i:03d}" for i, m in enumerate(metas) if _reference(m, where)]
        assert [it.id for it in faiss_store.list(limit=1000, where=where)] == want, where
        assert [it.id for it in milvus.list(limit=1000, where=where)] == want, (where, where_expression(index.check_where(where)))
        nonempty += 0 < len(want) < len(metas)
    assert nonempty > 50   # the filters tell items apart, rather than keeping all or none


def test_bad_items_filters_and_queries_are_refused_naming_the_value(open_milvus):
    store = open_milvus()
    good = np.ones(DIM, dtype=np.float32)
    for bad, match in [(Item("a", np.ones(DIM + 1, np.float32)), "shape"), (Item("a", np.full(DIM, np.nan, np.float32)), "NaN"),
                       (Item("", good), "non-empty string"), (Item("a", good, metadata={"x": float("inf")}), "JSON"),
                       (Item("a", good, thumbnail=b"x" * 60_000), "thumbnail is 60000 bytes"),
                       (Item("a", good, label="l" * 5000), "label is 5000 bytes")]:
        with pytest.raises(InvalidItemError, match=match):
            store.upsert([Item("ok", good), bad])
    assert store.count() == 0   # one bad item writes nothing
    with pytest.raises(InvalidItemError, match="unknown operator"):
        store.search(good, where={"x": {"$regex": "a"}})
    with pytest.raises(InvalidItemError, match="control characters"):
        store.count(where={"x": {"$gt": "a\x01"}})
    with pytest.raises(InvalidItemError, match="k must be"):
        store.search(good, k=0)
    with pytest.raises(KeyError):
        store.search_by_id("nope")
    with pytest.raises(InvalidItemError, match="two whole numbers"):
        store.reaches("x")
    assert store.reaches("99999.3") and store.position() == "0.0"


def test_a_gallery_records_its_model_and_refuses_another_and_read_only_refuses_writes(open_milvus):
    open_milvus(gallery="shoes").upsert([Item("a", np.ones(DIM, np.float32))])
    with pytest.raises(index.ModelMismatchError, match="dim 32.*dim 64"):
        open_milvus(gallery="shoes", dim=64)
    with pytest.raises(index.ModelMismatchError, match="other@1"):
        open_milvus(gallery="shoes", model_id="other@1")
    adopted = open_milvus(gallery="shoes", dim=None, model_id=None, read_only=True)
    assert (adopted.dim, adopted.model_id, adopted.count()) == (DIM, MODEL, 1)
    with pytest.raises(index.ReadOnlyError):
        adopted.delete(["a"])
    with pytest.raises(index.StoreMissingError):
        open_milvus(gallery="hats", read_only=True)


def test_galleries_map_to_collections_one_to_one_and_are_listed_and_dropped(open_milvus, tmp_path):
    names = ["default", "a-b", "a_b", "a__b", "a_d", "a-d", "x" * 63, "0"]
    assert len({collection_name(n) for n in names}) == len(names)
    assert all(_gallery_of(collection_name(n)) == n for n in names)
    assert _gallery_of("simsearch_a_x") is None and _gallery_of("other") is None
    for n in ["a-b", "default", "a_b"]:
        open_milvus(gallery=n)
    uri = str(tmp_path / "milvus.db")
    assert index.milvus_gallery_names(uri) == ["default", "a-b", "a_b"]
    store = open_milvus(gallery="a-b")
    assert not store.folder_changed()
    assert index.drop_milvus_gallery(uri, "a-b") and not index.drop_milvus_gallery(uri, "a-b")
    assert store.folder_changed() and index.milvus_gallery_names(uri) == ["default", "a_b"]
    with pytest.raises(InvalidItemError):
        collection_name("Bad Name")


def test_match_fields_keep_json_types_apart():
    m = match_fields("cat", {"a": 1, "b": True, "c": None, "d": "1", "e": [1], "f": [[1], {}], "g": {"x": 1}})
    kinds = sorted(k[0] for k in m if k != "l")
    assert kinds == ["a", "b", "e", "e", "e", "e", "e", "e", "e", "h", "n", "s", "x", "y", "z"] and "l" in m


def test_list_elements_are_matched_by_their_json_type_and_value():
    # a list's elements by typed hash: 1 and 1.0 are one, "1", true and null are others
    m = match_fields(None, {"a": [1.0, True, None, "1", "1"], "b": [1], "c": [True], "d": ["1"], "e": [None]})
    hashes = [m[k] for k in m if k.startswith("a")]
    assert len(hashes[0]) == 4 and all(set(h) <= set(hashes[0]) for h in hashes[1:])
    assert len({h[0] for h in hashes[1:]}) == 4


def _milvus_server(data_dir, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert proc.poll() is None, "the Milvus Lite server exited"
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the Milvus Lite server did not listen within 60 s")


def test_what_milvus_acknowledged_survives_kill_9_of_the_milvus_server(tmp_path):
    port = free_port()
    server = _milvus_server(tmp_path / "data", port)
    uri = f"http://127.0.0.1:{port}"
    vecs = unit(np.random.default_rng(4), 30)
    try:
        store = MilvusStore.open(MilvusConfig(uri, dim=DIM, model_id=MODEL))
        store.upsert([Item(f"i{j}", vecs[j], "x", {"j": j}, b"thumb") for j in range(30)])
        store.delete(["i0"])
        store.update("i1", label="y")
        store.close()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    server = _milvus_server(tmp_path / "data", port)
    try:
        store = MilvusStore.open(MilvusConfig(uri, dim=DIM, model_id=MODEL))
        assert store.count() == 29 and store.get("i1").label == "y" and store.thumbnail("i29") == b"thumb"
        assert store.search(vecs[5], k=1)[0][0].id == "i5"
        store.close()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_a_dropped_collection_and_an_unreachable_milvus_raise_the_stores_errors(tmp_path):
    port = free_port()
    server = _milvus_server(tmp_path / "data", port)
    uri = f"http://user:secret@127.0.0.1:{port}"
    try:
        store = MilvusStore.open(MilvusConfig(uri, gallery="g", dim=DIM, model_id=MODEL))
        store.upsert([Item("a", np.ones(DIM, np.float32))])
        index.drop_milvus_gallery(uri, "g")
        assert store.folder_changed()
        with pytest.raises(index.StoreClosedError, match="dropped"):
            store.search(np.ones(DIM, np.float32))
        store.close()
        store = MilvusStore.open(MilvusConfig(uri, gallery="g", dim=DIM, model_id=MODEL))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert not store.folder_changed()   # cannot tell while Milvus is down: kept
    with pytest.raises(index.StoreUnavailableError, match=r"Milvus at http://\*\*\*@127.0.0.1") as err:
        store.count()
    assert "secret" not in str(err.value)
    with pytest.raises(index.StoreUnavailableError):
        store.upsert([Item("b", np.ones(DIM, np.float32))])
    store.close()


def test_every_flush_every_rows_written_are_sealed_into_a_segment(open_milvus, tmp_path):
    """Milvus Lite copies unsealed rows at every search (230 ms a search at 10,000 of them): the store
    asks for a flush every flush_every rows it writes. Seen here as Milvus Lite's segment files."""
    store = open_milvus(flush_every=20)
    segments = lambda: list((tmp_path / "milvus.db").rglob("*.parquet"))  # noqa: E731
    store.upsert([Item(f"a{i}", np.ones(DIM, np.float32)) for i in range(15)])
    assert segments() == []
    store.upsert([Item(f"b{i}", np.ones(DIM, np.float32)) for i in range(5)])
    assert len(segments()) == 1 and store.count() == 20
    store.upsert([Item(f"c{i}", np.ones(DIM, np.float32)) for i in range(5)])
    assert len(segments()) == 1
    assert store.snapshot() == 25 and len(segments()) == 2


def test_labels_with_quotes_backslashes_and_control_characters_filter_exactly(open_milvus):
    store = open_milvus()
    labels = ['a"b', "back\\slash", "tab\tx", "ctl\x01y", "new\nline", "é✓", "plain"]
    vecs = unit(np.random.default_rng(8), len(labels))
    store.upsert([Item(f"i{j}", vecs[j], lab) for j, lab in enumerate(labels)])
    for j, lab in enumerate(labels):
        assert store.count(label=lab) == 1 and [it.id for it in store.list(label=lab)] == [f"i{j}"], lab
        assert [h.id for h in store.search(vecs[0], k=5, label=lab)[0]] == [f"i{j}"], lab
    assert store.delete_where(label="ctl\x01y") == ["i3"] and store.count() == len(labels) - 1


def test_listings_past_one_query_page_read_every_row_in_order(open_milvus, monkeypatch):
    import index._milvus as milvus_module

    monkeypatch.setattr(milvus_module, "_SCAN_PAGE", 5)   # 12 items: the iterator's pages, not one query
    store = open_milvus()
    vecs = unit(np.random.default_rng(9), 12)
    for j in range(12):   # one write each: twelve positions in the listing
        store.upsert([Item(f"i{j:02d}", vecs[j], "odd" if j % 2 else "even", {"j": j})])
    assert [it.id for it in store.list(limit=100)] == [f"i{j:02d}" for j in range(12)]
    assert [it.id for it in store.list(offset=4, limit=3)] == ["i04", "i05", "i06"]
    assert store.labels() == {"even": 6, "odd": 6} and store.index_metadata(["j"]) == {"j": 12}
    assert sorted(store.delete_where(where={"j": {"$gte": 5}})) == [f"i{j:02d}" for j in range(5, 12)]


@pytest.mark.parametrize("kind, milvus_kind", [("hnsw", "HNSW"), ("ivf", "IVF_FLAT")])
def test_approximate_index_kinds_are_built_by_milvus_and_find_each_item_first(open_milvus, kind, milvus_kind):
    store = open_milvus(index=kind, flush_every=0)
    vecs = unit(np.random.default_rng(10), 2000)
    store.upsert([Item(f"i{j}", vecs[j], f"c{j % 4}") for j in range(2000)])
    store.snapshot()   # sealed: Milvus builds the index on the segment
    assert store.info()["index_kind"] == milvus_kind and store.info()["exact"] is False
    found = store.search(vecs[:50], k=3)
    assert sum(hits[0].id == f"i{j}" for j, hits in enumerate(found)) >= 49
    assert all(h.label == "c1" for h in store.search(vecs[1], k=5, label="c1")[0])
    with pytest.raises(InvalidItemError, match="index kinds are flat, hnsw, ivf"):
        open_milvus(gallery="other", index="ivfpq")


def test_processes_making_the_same_gallery_at_once_all_open_it(tmp_path):
    """Several clients (as several service processes) open the same new gallery at the same moment: one makes
    the collection, and the others, whose own making fails, wait for it and open it instead of failing."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    start = threading.Barrier(4)

    def open_at_once(gallery: str) -> str:
        start.wait()
        store = MilvusStore.open(MilvusConfig(uri, dim=DIM, model_id=MODEL, gallery=gallery))
        try:
            return store._made
        finally:
            store.close()

    server = _milvus_server(tmp_path / "data", port)
    try:
        for n in range(8):
            with ThreadPoolExecutor(4) as pool:
                made = list(pool.map(open_at_once, [f"g{n}"] * 4))
            assert len(set(made)) == 1, made   # one collection, the same for all four
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_facets_count_as_the_faiss_stores_do(open_milvus, open_store):
    items = _items()
    milvus, faiss_store = open_milvus(), open_store()
    milvus.upsert(items)
    faiss_store.upsert(items)
    for field, filters, keep in CASES:
        got, want = milvus.facets(field, **filters), faiss_store.facets(field, **filters)
        assert _same(got, want) and _same(got, _by_hand(items, field, keep)), (field, filters, got, want)


def test_metadata_comes_back_exactly_as_stored_in_milvus_too(open_milvus):
    # what a JSON parser could change, within what Milvus holds (its JSON field refuses integers beyond 64
    # bits): the ends of int64, floats at the edge of their precision, integral floats, nesting
    metas = [{"max": 2 ** 63 - 1, "min": -(2 ** 63), "one": 1.0}, {"f": 0.1 + 0.2, "tiny": 5e-324, "z": -0.0},
             {"nested": {"a": [1, 2.5, None, True, "caf\u00e9"]}}]
    vecs = unit(np.random.default_rng(21), len(metas))
    store = open_milvus()
    store.upsert([Item(f"x{i}", vecs[i], None, m) for i, m in enumerate(metas)])
    for i, m in enumerate(metas):
        for got in (store.get(f"x{i}").metadata, store.search(vecs[i], k=1)[0][0].metadata):
            assert got == m and [type(v) for v in got.values()] == [type(v) for v in m.values()]


def test_grouped_searches_find_the_groups_the_faiss_store_finds(open_milvus, open_store):
    rng = np.random.default_rng(22)
    vectors = unit(rng, 300)
    items = [Item(f"i{n}", v, label=f"c{n % 7}", metadata={"product": n % 30, "shop": n % 2})
             for n, v in enumerate(vectors)]
    milvus, faiss_store = open_milvus(), open_store()
    milvus.upsert(items)
    faiss_store.upsert(items)
    q = unit(rng, 3)
    for group_by, k, size, filters in [("label", 5, 2, {}), ("metadata.product", 8, 3, {"where": {"shop": 1}}),
                                       ("metadata.product", 4, 1, {"label": "c3", "max_distance": 1.3})]:
        first = [row[0].id for row in faiss_store.search_grouped(q, k, group_by, size, **filters)]
        got = milvus.search_grouped(q, k, group_by, size, exclude=first, **filters)
        want = faiss_store.search_grouped(q, k, group_by, size, exclude=first, **filters)
        assert not {h.id for row in want for h in row} & set(first)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want], (group_by, filters)
        assert all(len(row) == k * size for row in want) or "max_distance" in filters


def test_paging_after_a_listing_position_skips_no_unchanged_item_as_the_faiss_store_does(open_milvus):
    check_paging_after_a_position(open_milvus())


def test_a_milvus_store_has_every_method_and_attribute_of_a_gallery_store(open_milvus):
    from index import GalleryStore

    assert isinstance(open_milvus(), GalleryStore)
