"""Group commit of POST /index writes, on a real Store: requests queued together share one commit,
the later of two requests with the same id wins, and a refused item fails only its own request."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import index
from app._commits import GroupCommitter
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
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], index.InvalidItemError) and "bad0" in str(results[1])
    assert sorted(it.id for it in store.list(limit=10)) == ["a0", "a1", "c0", "c1"]
    assert _commits(metrics)[0] == 1.0   # the combined attempt; the retries one by one are not grouped
    await committer.stop()


async def test_concurrent_index_requests_over_the_api_keep_every_good_item(make_settings):
    too_big = '{"blob": "' + "x" * (70 * 1024) + '"}'   # passes the field limit below, refused by the store
    async with running(make_settings(max_field_bytes=200_000)) as c:
        async def post(i):
            data = {"id": [f"g{i}"]}
            if i == 3:
                data["metadata"] = too_big
            return i, await c.post("/index", files=[upload(png(i))], data=data)

        responses = dict(await asyncio.gather(*(post(i) for i in range(8))))
        for i, r in responses.items():
            if i == 3:
                assert_error(r, 422, "rejected_by_index", "g3")
            else:
                assert r.status_code == 201, r.text
        listed = (await c.get("/index")).json()
        assert sorted(it["id"] for it in listed["items"]) == [f"g{i}" for i in range(8) if i != 3]
