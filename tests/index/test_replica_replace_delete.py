"""A read-only replica drops an item its writer replaced and then deleted between two refreshes: the change log
lists the row a replacement supersedes (INSERT OR REPLACE fires no DELETE trigger, so a trigger of its own
logs it). A seeded random history of writes leaves the replica as a fresh open of the store sees it, and a
store whose log lacked that trigger (written by a version from before it) is followed correctly too."""
from __future__ import annotations

import random
import sqlite3

import numpy as np

from index import Item, Store, StoreConfig

from .conftest import DIM, unit


def _view(store: Store, queries: np.ndarray) -> dict:
    """What searches, counts and filters of `store` see (its in-memory state, not the database's)."""
    k = max(store.count(), 1)
    return {"count": store.count(), "labels": store.labels(),
            "found": [sorted(h.id for h in hits) for hits in store.search(queries, k=k)],
            "filtered": [it.id for it in store.list(limit=1000, where={"n": {"$gte": 0}})],
            "facets": store.facets("metadata.n").values}


def test_an_item_replaced_then_deleted_between_two_refreshes_is_gone_from_the_replica(open_store, tmp_path):
    vectors = unit(np.random.default_rng(1), 4)
    writer = open_store()
    writer.upsert([Item("a", vectors[0], "cat", {"n": 1}), Item("b", vectors[1], "dog", {"n": 2})])
    replica = open_store(read_only=True, model_id=None, dim=None)
    assert replica.count() == 2

    writer.upsert([Item("a", vectors[2], "cat", {"n": 1})])   # replaced: a new row, the old one superseded
    writer.delete(["a"])
    assert replica.refresh() == (0, 1, 0)

    assert replica.count() == 1 and "a" not in replica and replica.labels() == {"dog": 1}
    assert [h.id for h in replica.search(vectors[0], k=5)[0]] == ["b"]
    assert [h.id for h in replica.search(vectors[2], k=5)[0]] == ["b"]
    assert [it.id for it in replica.list(where={"n": 1})] == []
    assert replica.reaches(writer.position())


def test_a_seeded_random_history_leaves_the_replica_as_a_fresh_open_sees_the_store(open_store, tmp_path):
    rng, pick = np.random.default_rng(2), random.Random(2)
    queries = unit(rng, 6)
    writer = open_store()
    writer.upsert([Item(f"i{j}", v, pick.choice(["a", "b", None]), {"n": j % 3}) for j, v in enumerate(unit(rng, 8))])
    replica = open_store(read_only=True, model_id=None, dim=None)
    for step in range(300):
        op, j = pick.choice(["put", "put", "delete", "update", "update_where", "delete_where", "refresh"]), \
            pick.randrange(12)
        if op == "put":   # an addition, or a replacement of an item there
            writer.upsert([Item(f"i{j}", unit(rng, 1)[0], pick.choice(["a", "b", None]), {"n": pick.randrange(3)})])
        elif op == "delete":
            writer.delete([f"i{j}"])
        elif op == "update" and f"i{j}" in writer:
            writer.update(f"i{j}", label=pick.choice(["a", "b", None]), metadata_patch={"n": pick.randrange(3)})
        elif op == "update_where":
            writer.update_where(where={"n": pick.randrange(3)}, new_label=pick.choice(["a", "c"]))
        elif op == "delete_where":
            writer.delete_where(label=pick.choice(["a", "b", "c"]))
        elif op == "refresh":
            replica.refresh()
    replica.refresh()
    fresh = open_store(read_only=True, model_id=None, dim=None)
    assert _view(replica, queries) == _view(fresh, queries) == _view(writer, queries)
    assert replica.position() == fresh.position()


def test_a_replica_that_missed_a_replacement_in_a_log_from_before_its_trigger_drops_it_once_a_writer_adds_it(
        tmp_path):
    folder = tmp_path / "store"
    config = StoreConfig(folder, dim=DIM, model_id="m", snapshot_every=0)
    vectors = unit(np.random.default_rng(3), 3)
    with Store.open(config) as writer:
        writer.upsert([Item("a", vectors[0], "x", {}), Item("b", vectors[1], "x", {})])
    with sqlite3.connect(folder / "store.sqlite3") as db:   # the log as a version from before the trigger kept it
        db.execute("DROP TRIGGER items_replaced_log")
    with Store.open(StoreConfig(folder, read_only=True)) as replica:
        assert replica.refresh() == (0, 0, 0)
        with sqlite3.connect(folder / "store.sqlite3") as db:   # that version's writer: a replacement, a deletion
            db.execute("INSERT OR REPLACE INTO items (id, seq, vector, label, metadata) VALUES ('a', 3, ?, 'x', '{}')",
                       (vectors[2].tobytes(),))
            db.execute("DELETE FROM items WHERE id = 'a'")
            db.execute("UPDATE meta SET value = '4' WHERE key = 'last_seq'")
        # a replica following such a writer compares the listing: the log lacks a trigger
        assert replica.refresh() == (0, 1, 0) and "a" not in replica and replica.count() == 1

        # A replica of that version trusted such a log all the same (its test, without the triggers' check)
        replica._log_reaches = lambda conn, meta, top: top >= replica._log_seen and \
            int(meta.get("changes_pruned", 0)) <= replica._log_seen
        with sqlite3.connect(folder / "store.sqlite3") as db:
            db.execute("INSERT INTO items (id, seq, vector, label, metadata) VALUES ('c', 5, ?, 'x', '{}')",
                       (vectors[0].tobytes(),))
            db.execute("UPDATE meta SET value = '5' WHERE key = 'last_seq'")
        assert replica.refresh() == (1, 0, 0)
        with sqlite3.connect(folder / "store.sqlite3") as db:
            db.execute("INSERT OR REPLACE INTO items (id, seq, vector, label, metadata) VALUES ('c', 6, ?, 'x', '{}')",
                       (vectors[2].tobytes(),))
            db.execute("DELETE FROM items WHERE id = 'c'")
            db.execute("UPDATE meta SET value = '7' WHERE key = 'last_seq'")
        assert replica.refresh() == (0, 0, 0) and "c" in replica   # so it kept 'c', which is gone

        with Store.open(config) as writer:   # this version's writer adds the trigger and restarts the log,
            assert replica.refresh() == (0, 1, 0)   # so that every replica compares the listing once
            assert "c" not in replica and replica.count() == writer.count() == 1
            writer.upsert([Item("b", vectors[2], "x", {})])   # and from then on the log lists replacements
            writer.delete(["b"])
            assert replica.refresh() == (0, 1, 0) and replica.count() == 0
