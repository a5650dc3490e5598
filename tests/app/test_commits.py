"""Group commit of POST /index writes, on a real Store: requests queued together share one commit,
the later of two requests with the same id wins, and a refused item fails only its own request."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import index
from app._commits import Duplicate, GroupCommitter
from app._metrics import Metrics

from .conftest import running
from .test_api import assert_error, png, upload

pytestmark = pytest.mark.anyio
DIM = 16


def _items(prefix: str, n: int, label: str | None = None, metadata: dict | None = None) -> list[index.Item]:
    rng = np.random.default_rng(abs(hash(prefix)) % 2 ** 32)
    return [index.Item(f"{prefix}{i}", rng.standard_normal(DIM).astype(np.float32), label=label, metadata=metadata)
            for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = index.Store.open(index.StoreConfig(path=tmp_path / "store", dim=DIM, model_id="m@0", snapshot_every=0))
    yield s
    s.close()


def _commits(metrics: Metrics) -> tuple[float, float]:
    """(number of commits, requests committed) from the histogram."""
    count = metrics.registry.get_sample_value("simsearch_index_commit_requests_count")
    total = metrics.registry.get_sample_value("simsearch_index_commit_requests_sum")
    return count, total


async def test_requests_queued_together_are_committed_in_one_transaction(store):
    metrics = Metrics()
    committer = GroupCommitter(store.upsert, index.InvalidItemError, metrics)
    committer.start()
    await asyncio.gather(*(committer.upsert(_items(f"r{r}-", 3)) for r in range(10)))
    assert store.count() == 30
    assert _commits(metrics) == (1.0, 10.0)
    await committer.upsert(_items("later-", 2))   # alone: a commit of its own
    assert _commits(metrics) == (2.0, 11.0) and store.count() == 32
    await committer.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await committer.upsert(_items("after-", 1))


async def test_the_later_of_two_requests_with_the_same_id_wins(store):
    committer = GroupCommitter(store.upsert, index.InvalidItemError, Metrics())
    committer.start()
    first, second = _items("same", 1, label="first"), _items("same", 1, label="second")
    await asyncio.gather(committer.upsert(first), committer.upsert(second))
    assert store.get("same0").label == "second"
    await committer.stop()


async def test_a_refused_item_fails_only_its_own_request_and_the_others_are_written(store):
    metrics = Metrics()
    committer = GroupCommitter(store.upsert, index.InvalidItemError, metrics)
    committer.start()
    too_big = {"blob": "x" * (64 * 1024 + 1)}   # over the store's 64 KiB metadata limit
    results = await asyncio.gather(committer.upsert(_items("a", 2)), committer.upsert(_items("bad", 1, metadata=too_big)),
                                   committer.upsert(_items("c", 2)), return_exceptions=True)
    assert results[0] == [] and results[2] == []   # stored, nothing left out
    assert isinstance(results[1], index.InvalidItemError) and "bad0" in str(results[1])
    assert sorted(it.id for it in store.list(limit=10)) == ["a0", "a1", "c0", "c1"]
    assert _commits(metrics)[0] == 1.0   # the combined attempt; the retries one by one are not grouped
    await committer.stop()


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


async def test_requests_committed_together_skip_look_alikes_of_each_other(store):
    metrics = Metrics()
    committer = GroupCommitter(store.upsert, index.InvalidItemError, metrics, store.search)
    committer.start()
    rng = np.random.default_rng(5)
    v, w = _unit(rng), _unit(rng)
    store.upsert([index.Item("old", w)])
    near_v = v + 0.01 * _unit(rng)   # cosine about 0.99995 with v
    # queued together: a new picture, its near copy, a copy of what the gallery holds, and one that asks nothing
    results = await asyncio.gather(committer.upsert([index.Item("a", v)], 0.98),
                                   committer.upsert([index.Item("b", near_v)], 0.98),
                                   committer.upsert([index.Item("c", w.copy())], 0.98),
                                   committer.upsert([index.Item("d", v.copy())]))
    assert _commits(metrics) == (1.0, 4.0)   # one commit: the copies were found among its own items
    assert results[0] == [] and results[3] == []
    assert results[1] == [Duplicate(0, "b", "a", pytest.approx(1.0, abs=1e-3))]
    assert results[2] == [Duplicate(0, "c", "old", pytest.approx(1.0, abs=1e-5))]
    assert sorted(it.id for it in store.list(limit=10)) == ["a", "d", "old"]
    await committer.stop()


async def test_look_alikes_stay_left_out_when_a_refused_item_splits_the_commit(store):
    committer = GroupCommitter(store.upsert, index.InvalidItemError, Metrics(), store.search)
    committer.start()
    rng = np.random.default_rng(6)
    v = _unit(rng)
    too_big = {"blob": "x" * (64 * 1024 + 1)}
    results = await asyncio.gather(
        committer.upsert([index.Item("a", v), index.Item("a-copy", v.copy())], 0.98),
        committer.upsert([index.Item("bad", _unit(rng), metadata=too_big)], 0.98), return_exceptions=True)
    assert results[0] == [Duplicate(1, "a-copy", "a", pytest.approx(1.0, abs=1e-5))]
    assert isinstance(results[1], index.InvalidItemError)
    assert [it.id for it in store.list(limit=10)] == ["a"]
    await committer.stop()


async def test_concurrent_index_requests_over_the_api_keep_every_good_item(make_settings):
    # passes the field limit below; refused as the store would refuse it, before its request reaches the committer
    # (a refusal inside a shared commit: test_a_refused_item_fails_only_its_own_request_and_the_others_are_written)
    too_big = '{"blob": "' + "x" * (70 * 1024) + '"}'
    async with running(make_settings(max_field_bytes=200_000)) as c:
        async def post(i):
            data = {"id": [f"g{i}"]}
            if i == 3:
                data["metadata"] = too_big
            return i, await c.post("/index", files=[upload(png(i))], data=data)

        responses = dict(await asyncio.gather(*(post(i) for i in range(8))))
        for i, r in responses.items():
            if i == 3:
                assert_error(r, 422, "invalid_metadata", "metadata part 0 is 71691 bytes of JSON, more than 65536")
            else:
                assert r.status_code == 201, r.text
        listed = (await c.get("/index")).json()
        assert sorted(it["id"] for it in listed["items"]) == [f"g{i}" for i in range(8) if i != 3]
