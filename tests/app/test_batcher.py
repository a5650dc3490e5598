"""The micro-batcher's two threads: the next batch is decoded while the model thread is busy, a bad
image still fails only its own request, and stopping finishes the batch in the model thread.

These drive app._batcher.MicroBatcher directly with a model that blocks until the test lets it go, so
which thread did what, and when, is observed rather than timed."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app._batcher import MicroBatcher, SearchParams
from app._metrics import Metrics

pytestmark = pytest.mark.anyio


class _Model:
    """embed() blocks until `release` is set, then costs `cpu_s` of CPU; records the batch sizes it saw."""

    def __init__(self, cpu_s: float = 0.0):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []
        self.cpu_s = cpu_s

    def embed(self, arrays: np.ndarray) -> np.ndarray:
        self.batches.append(len(arrays))
        self.entered.set()
        assert self.release.wait(10), "the test never released the model"
        _burn(self.cpu_s)
        return arrays.reshape(len(arrays), -1)[:, :2].astype(np.float32)

    @staticmethod
    def search(vectors: np.ndarray, params: SearchParams) -> list:
        return [[("hit", float(v[0]))] for v in vectors]


def _image(value: int) -> np.ndarray:
    return np.full((1, 1, 2, 2), value, np.uint8)


def _burn(cpu_s: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < cpu_s:
        pass


def _busy_decode(value: int, cpu_s: float):
    """A decode that costs `cpu_s` of CPU, as a large photo's does."""
    def run():
        _burn(cpu_s)
        return _image(value)
    return run


async def _wait_for(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_photos_are_decoded_while_the_model_thread_is_busy_with_the_previous_batch():
    model, metrics = _Model(), Metrics()
    model.release.set()
    batcher = MicroBatcher(model.embed, model.search, max_size=8, max_wait_s=0, metrics=metrics)
    batcher.start()
    # A first batch whose decoding costs more CPU than its model call, as a photo's does.
    await batcher.submit_encoded(_busy_decode(0, 0.03), 1, SearchParams(k=1))
    model.release.clear()
    model.entered.clear()
    decoded_in, decoded = [], threading.Event()

    def decode(value: int):
        def run():
            decoded_in.append(threading.current_thread().name)
            decoded.set()
            return _busy_decode(value, 0.03)()
        return run

    first = asyncio.ensure_future(batcher.submit_encoded(decode(1), 1, SearchParams(k=1)))
    await _wait_for(model.entered)             # the model thread holds the first batch
    decoded.clear()
    second = asyncio.ensure_future(batcher.submit_encoded(decode(2), 1, SearchParams(k=1)))
    await _wait_for(decoded)                    # decoded although the model has not finished the first
    assert not first.done() and not second.done()
    assert decoded_in[0].startswith("simsearch-embed") and decoded_in[1].startswith("simsearch-decode"), decoded_in
    model.release.set()
    (_, hits1), (_, hits2) = await first, await second
    assert hits1 == [[("hit", 1.0)]] and hits2 == [[("hit", 2.0)]]   # each request got its own answer
    assert model.batches == [1, 1, 1]
    assert metrics.registry.get_sample_value("simsearch_decoded_ahead_batches_total") == 1   # the second only
    await batcher.stop()


@pytest.mark.parametrize("waiting", [2, 4])
async def test_small_images_are_gathered_while_the_model_works_and_taken_early_only_when_full(waiting):
    model = _Model()
    batcher = MicroBatcher(model.embed, model.search, max_size=4, max_wait_s=0, metrics=Metrics())
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(_image(1), SearchParams(k=1)))
    await _wait_for(model.entered)
    decoded_in: list[str] = []

    def decode(value: int):
        def run():
            decoded_in.append(threading.current_thread().name)
            return _image(value)
        return run

    rest = [asyncio.ensure_future(batcher.submit_encoded(decode(i), 1, SearchParams(k=1))) for i in range(waiting)]
    if waiting < 4:   # a part batch stays in the queue while the model works
        await asyncio.sleep(0.2)
        assert decoded_in == []
    else:             # a full one is taken and decoded meanwhile
        for _ in range(1000):
            if len(decoded_in) == 4:
                break
            await asyncio.sleep(0.01)
        assert len(decoded_in) == 4 and all(t.startswith("simsearch-decode") for t in decoded_in), decoded_in
    model.release.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [1, waiting]
    await batcher.stop()


async def test_an_image_that_fails_to_decode_ahead_fails_only_its_own_request():
    model = _Model()
    model.release.set()
    batcher = MicroBatcher(model.embed, model.search, max_size=8, max_wait_s=0.05, metrics=Metrics())
    batcher.start()
    await batcher.submit_encoded(_busy_decode(0, 0.03), 1, SearchParams(k=1))   # photos: decoded ahead
    model.release.clear()
    model.entered.clear()
    first = asyncio.ensure_future(batcher.submit(_image(1), SearchParams(k=1)))
    await _wait_for(model.entered)

    def bad():
        raise ValueError("not an image")

    good = asyncio.ensure_future(batcher.submit_encoded(_busy_decode(3, 0.03), 1, SearchParams(k=1)))
    broken = asyncio.ensure_future(batcher.submit_encoded(bad, 1, SearchParams(k=1)))
    await asyncio.sleep(0.1)   # both are taken as one batch and decoded ahead
    model.release.set()
    assert (await first)[1] == [[("hit", 1.0)]]
    assert (await good)[1] == [[("hit", 3.0)]]
    with pytest.raises(ValueError, match="not an image"):
        await broken
    assert model.batches == [1, 1, 1]   # the bad image never reached the model
    await batcher.stop()


async def test_stopping_finishes_the_batch_in_the_model_thread_and_fails_the_rest():
    model = _Model()
    batcher = MicroBatcher(model.embed, model.search, max_size=1, max_wait_s=0, metrics=Metrics())
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(_image(1), SearchParams(k=1)))
    await _wait_for(model.entered)
    waiting = asyncio.ensure_future(batcher.submit(_image(2), SearchParams(k=1)))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()                  # it waits for the model thread's batch
    model.release.set()
    await stopping
    assert (await running)[1] == [[("hit", 1.0)]]
    with pytest.raises(RuntimeError, match="shutting down"):
        await waiting


@pytest.mark.parametrize("decode_cpu_s, model_cpu_s, held", [(0.03, 0.0, False), (0.0, 0.01, True)])
async def test_a_fuller_batch_is_waited_for_only_while_decoding_costs_less_than_the_model(decode_cpu_s, model_cpu_s,
                                                                                         held):
    model = _Model(model_cpu_s)
    model.release.set()
    batcher = MicroBatcher(model.embed, model.search, max_size=8, max_wait_s=30, metrics=Metrics())
    batcher.start()
    # Two at once: requests arrive together, so the batcher would wait up to 30 s for a fuller batch.
    await asyncio.gather(*(batcher.submit_encoded(_busy_decode(i, decode_cpu_s), 1, SearchParams(k=1))
                           for i in (1, 2)))
    late = asyncio.ensure_future(batcher.submit_encoded(_busy_decode(3, decode_cpu_s), 1, SearchParams(k=1)))
    done, _ = await asyncio.wait([late], timeout=1.0)
    if held:       # decoding is cheap: a bigger batch saves more than the wait costs
        assert not done and model.batches == [2]
        await batcher.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await late
    else:          # decoding is the larger cost: the next batch goes at once, its decoding overlapping the model
        assert done and (await late)[1] == [[("hit", 3.0)]] and model.batches == [2, 1]
        await batcher.stop()
