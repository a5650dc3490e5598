"""Micro-batching: concurrent requests' images are decoded, embedded and searched together, off the
event loop, in a model thread, with a second thread that decodes the next batch while the model thread
is busy."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._metrics import Metrics


@dataclass(frozen=True)
class SearchParams:
    """What a query asks the index for."""

    k: int
    label: str | None = None
    max_distance: float | None = None
    rerank: int | None = None   # re-order this many nearest candidates with the PDDM head, keep k
    where: str | None = None    # metadata filter: a JSON object, keys sorted (hashable, one batch group)
    gallery: str = "default"   # which gallery to search
    group_by: str | None = None   # "label" or "metadata.KEY": k groups, each with its group_size nearest items
    group_size: int = 1
    exclude: tuple[str, ...] = ()   # ids never returned (shown already, marked, the query item itself)
    offset: int = 0   # nearest items (or groups) skipped: the next page
    # The search's own index parameters (None, False: the gallery's). Part of the batch key like the rest: requests
    # that differ in them never share an index call (MicroBatcher._process groups by the whole SearchParams).
    nprobe: int | None = None      # IVF lists probed
    ef_search: int | None = None   # HNSW candidates kept
    exact: bool = False            # every vector compared at full precision

    def tuning(self) -> dict:
        """The search's own index parameters as a store's search takes them (keyword arguments), {} for none:
        the store searches with its own, as it did before they existed."""
        given = {"nprobe": self.nprobe, "ef_search": self.ef_search, "exact": self.exact or None}
        return {name: value for name, value in given.items() if value is not None}


@dataclass
class _Job:
    rows: int                                # images in this job
    arrays: np.ndarray | None                # uint8 (rows, C, S, S), or None until `decode` makes it
    decode: Callable[[], np.ndarray] | None  # runs in a worker thread; may raise (fails this job only)
    search: SearchParams | None
    future: asyncio.Future = field(repr=False)
    failed: BaseException | None = None      # what `decode` raised, when it ran ahead in the decode thread
    decode_cpu_s: float = 0.0                # the CPU time `decode` took (its thread's)


class MicroBatcher:
    """Collects embedding jobs until `max_size` images are waiting or `max_wait_s` has passed since
    the first, then decodes the jobs that came as bytes, embeds them in one model call and runs the
    searches, in one model thread.

    `embed(arrays) -> vectors` and `search(vectors, params) -> list[list[hit]]` are called in that
    thread; submit() and submit_encoded() resolve to (vectors, hits or None) for each job. Decoding
    with the batch means one thread hop per batch instead of one per request plus one per batch: on
    a small machine the hop costs as much event-loop CPU as the rest of the request
    (docs/results/benchmarks.md, P5). While the model thread is busy, the next batch is decoded in a
    second thread, so a JPEG's decoding overlaps the previous batch's model call and search (both
    release the GIL) instead of waiting for them.
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray],
                 search: Callable[[np.ndarray, SearchParams], list], max_size: int, max_wait_s: float,
                 metrics: Metrics):
        self._embed, self._search = embed, search
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simsearch-embed")
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simsearch-decode")
        self._taken: list[_Job] = []   # the batch taken from the queue and not yet in the model thread
        self._in_model: asyncio.Future | None = None   # the model thread's batch (done: the thread is free)
        self._task: asyncio.Task | None = None
        # Whether requests are arriving together: only then is waiting for a fuller batch worth it
        # (at one request at a time the wait is pure latency; docs/results/benchmarks.md, P4).
        self._concurrent = False
        # Whether the last batch's decoding took more than half the CPU of its model call and search
        # (photos). Then a fuller batch is not waited for: the next one is taken at once and decoded in
        # the decode thread while the model thread works, which pays more than a bigger batch would.
        self._decode_bound = False

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="simsearch-batcher")

    async def stop(self) -> None:
        """Stop the worker; the batch in the model thread is finished, other pending jobs fail with
        RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._in_model is not None:
            await asyncio.wait([self._in_model])
        for job in [*self._taken, *self._pending]:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._taken, self._pending = [], deque()
        self._decoder.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, arrays: np.ndarray, search: SearchParams | None = None) -> tuple[np.ndarray, Any]:
        """Embed uint8 `arrays` (and search with the vectors when `search` is given)."""
        return await self._enqueue(_Job(len(arrays), arrays, None, search, self._new_future()))

    async def submit_encoded(self, decode: Callable[[], np.ndarray], rows: int,
                             search: SearchParams | None = None) -> tuple[np.ndarray, Any]:
        """Like submit(), for `rows` images that `decode()` turns into uint8 arrays in a worker
        thread; an exception from it (e.g. a corrupt image) is raised here, for this job only."""
        return await self._enqueue(_Job(rows, None, decode, search, self._new_future()))

    def _new_future(self) -> asyncio.Future:
        if self._task is None or self._task.done():
            raise RuntimeError("the embedding worker is not running")
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, job: _Job) -> tuple[np.ndarray, Any]:
        self._pending.append(job)
        self._pending_rows += job.rows
        self._wake.set()
        if self._pending_rows >= self.max_size:
            self._full.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._decode_bound:
                await self._gather()
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0].rows <= self.max_size):
                job = self._pending.popleft()
                self._pending_rows -= job.rows
                if job.future.done():  # the client went away
                    continue
                batch.append(job)
                rows += job.rows
            self._concurrent = len(batch) > 1 or bool(self._pending)
            if not self._pending:
                self._wake.clear()
            if self._pending_rows < self.max_size:
                self._full.clear()
            if not batch:
                continue
            self._taken = batch
            if self._model_busy() and any(job.decode is not None for job in batch):
                # The model thread is still on the previous batch: decode this one meanwhile.
                self.metrics.decoded_ahead.inc()
                await loop.run_in_executor(self._decoder, self._decode, batch)
            if self._in_model is not None:
                await asyncio.wait([self._in_model])
            self._taken = []
            self._in_model = loop.run_in_executor(self._executor, self._process, batch)
            self._in_model.add_done_callback(lambda done, batch=batch: self._finish(batch, done))

    def _model_busy(self) -> bool:
        return self._in_model is not None and not self._in_model.done()

    async def _gather(self) -> None:
        """For small images: wait while the model thread works, until the batch is full or the thread is
        free (a part batch taken earlier would only wait, and cost a model call more); then, with the
        thread free and requests arriving together, up to `max_wait_s` for a full batch."""
        if self._model_busy() and self._pending_rows < self.max_size:
            full = asyncio.ensure_future(self._full.wait())
            try:
                await asyncio.wait([full, self._in_model], return_when=asyncio.FIRST_COMPLETED)
            finally:
                full.cancel()
        if not self._model_busy() and self._pending_rows < self.max_size and self.max_wait_s > 0 and self._concurrent:
            try:
                await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    def _finish(self, batch: list[_Job], done: asyncio.Future) -> None:
        """Hand the model thread's results (or its exception) to the batch's requests."""
        exc = done.exception() if not done.cancelled() else RuntimeError("the server is shutting down")
        for i, job in enumerate(batch):
            if job.future.done():
                continue
            result = exc if exc is not None else done.result()[i]
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    @staticmethod
    def _decode(batch: list[_Job]) -> None:
        for job in batch:
            if job.decode is not None:
                t0 = time.thread_time()
                try:
                    job.arrays = job.decode()
                except Exception as exc:  # noqa: BLE001  (a bad upload fails its own request only)
                    job.failed = exc
                job.decode = None
                job.decode_cpu_s = time.thread_time() - t0

    def _process(self, batch: list[_Job]) -> list[tuple[np.ndarray, Any] | BaseException]:
        self._decode(batch)   # what the decode thread has not decoded already
        out: list[Any] = [job.failed for job in batch]
        live = [i for i, job in enumerate(batch) if job.failed is None]   # the jobs with images to embed
        if not live:
            return out
        arrays = (np.concatenate([batch[i].arrays for i in live]) if len(live) > 1 else batch[live[0]].arrays)
        cpu0, t0 = time.thread_time(), time.perf_counter()
        vectors = self._embed(arrays)
        self.metrics.embed_seconds.observe(time.perf_counter() - t0)
        self.metrics.embed_batch.observe(len(arrays))
        start = 0
        for i in live:
            n = len(batch[i].arrays)
            out[i] = (vectors[start:start + n], None)
            start += n
        # One index call per distinct set of search parameters.
        groups: dict[SearchParams, list[int]] = {}
        for i in live:
            if batch[i].search is not None:
                groups.setdefault(batch[i].search, []).append(i)
        for params, members in groups.items():
            queries = np.concatenate([out[i][0] for i in members]) if len(members) > 1 else out[members[0]][0]
            t0 = time.perf_counter()
            try:
                hits = self._search(queries, params)
            except Exception as exc:  # noqa: BLE001  (only this group's requests fail)
                for i in members:
                    out[i] = exc
                continue
            self.metrics.search_seconds.observe(time.perf_counter() - t0)
            row = 0
            for i in members:
                n = len(batch[i].arrays)
                out[i] = (out[i][0], hits[row:row + n])
                row += n
        # CPU time, not wall time: in a thread that waits for the GIL, wall time is mostly the wait.
        # Half the model's cost already makes the overlap worth more than a fuller batch (a JPEG photo's
        # decoding is about that at half batches, a 32x32 PNG's a tenth).
        self._decode_bound = 2 * sum(job.decode_cpu_s for job in batch) > time.thread_time() - cpu0
        return out
