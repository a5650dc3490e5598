"""Group commit for POST /index: writes that arrive while one is being committed are committed
together in the next one (one SQLite transaction, one fsync), and each request is acknowledged
only once its own items are durable."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import anyio.to_thread
import numpy as np

from ._metrics import Metrics


@dataclass(frozen=True)
class Duplicate:
    """An item not stored because the gallery, or an item stored before it, holds a look-alike."""

    position: int        # its place among the items of its request
    id: str              # the id it would have had
    duplicate_of: str    # the look-alike's id
    score: float         # their cosine similarity


class GroupCommitter:
    """Serialises `upsert(items)` calls from many requests into as few commits as possible.

    Requests are committed in arrival order, so when two requests give the same id the later one
    wins, as it would one commit after the other (`Store.upsert` keeps the last of duplicate ids).
    If a combined commit fails with `item_error` (an item the store refuses), nothing of it was
    written and each request of the group is committed on its own, so that only the request with
    the bad item fails. Any other error fails the whole group.
    """

    def __init__(self, upsert: Callable[[Sequence[Any]], Any], item_error: type[BaseException],
                 metrics: Metrics, search: Callable[..., list] | None = None,
                 workers_lock: ContextManager | None = None):
        self._upsert, self._item_error, self.metrics = upsert, item_error, metrics
        self._search = search  # Store.search: what `skip_duplicates` compares with
        # Held by a commit that skips duplicates, from its search to its write, so that the other processes
        # writing the same gallery (serve --workers N on one Milvus) find what it stored.
        self._workers_lock = workers_lock
        self._pending: list[tuple[list, asyncio.Future, float | None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the committing task on the running loop."""
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="simsearch-commits")

    async def stop(self) -> None:
        """Commit what is queued, then stop (later upserts raise RuntimeError)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def upsert(self, items: Sequence[Any], skip_duplicates: float | None = None) -> list[Duplicate]:
        """Return once `items` are committed (durable), or raise what the store raised for them.

        skip_duplicates: leave out each item whose vector has a cosine similarity of at least this with an
        item of another id in the gallery or stored before it (earlier in this request, or in a request
        committed with it); returns those left out. Decided in the commit, so two requests carrying the
        same new image at once store it once."""
        if self._task is None or self._task.done() or self._stopping:
            raise RuntimeError("the index writer is not running")
        if skip_duplicates is not None and self._search is None:
            raise RuntimeError("this committer cannot search for duplicates")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), fut, skip_duplicates))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group = [entry for entry in self._pending if not entry[1].done()]  # not: client gone
            self._pending.clear()
            if group:
                outcomes = await anyio.to_thread.run_sync(self._commit, group)
                for (_, fut, _), (exc, skipped) in zip(group, outcomes):
                    if not fut.done():
                        if exc is None:
                            fut.set_result(skipped)
                        else:
                            fut.set_exception(exc)
            if self._stopping and not self._pending:
                return

    def _commit(self, group: list[tuple[list, asyncio.Future, float | None]]
                ) -> list[tuple[BaseException | None, list[Duplicate]]]:
        self.metrics.commit_requests.observe(len(group))
        if self._workers_lock is None or all(threshold is None for _, _, threshold in group):
            return self._commit_group(group)
        with self._workers_lock:
            return self._commit_group(group)

    def _commit_group(self, group: list[tuple[list, asyncio.Future, float | None]]
                      ) -> list[tuple[BaseException | None, list[Duplicate]]]:
        try:
            kept, skipped = self._without_duplicates(group)
        except Exception as exc:  # noqa: BLE001  (the search failed: the store is closing, say)
            return [(exc, [])] * len(group)
        try:
            self._upsert([item for items in kept for item in items])
            return [(None, s) for s in skipped]
        except Exception as exc:  # noqa: BLE001  (handed to the requests)
            if len(group) == 1 or not isinstance(exc, self._item_error):
                return [(exc, [])] * len(group)
        outcomes: list[tuple[BaseException | None, list[Duplicate]]] = []
        for items, s in zip(kept, skipped):  # find the request with the refused item: one commit each
            try:
                self._upsert(items)
                outcomes.append((None, s))
            except Exception as exc:  # noqa: BLE001
                outcomes.append((exc, []))
        return outcomes

    def _without_duplicates(self, group) -> tuple[list[list], list[list[Duplicate]]]:
        """Each request's items less those `skip_duplicates` leaves out, and those, in commit order."""
        kept: list[list] = [items for items, _, _ in group]
        skipped: list[list[Duplicate]] = [[] for _ in group]
        if all(threshold is None for _, _, threshold in group):
            return kept, skipped   # plain writes, the usual case: no vector is looked at
        earlier_ids: list[str] = []           # the items stored before, in this commit: not in the gallery yet
        earlier: list[np.ndarray] = []        # their unit vectors, a block per request
        for r, (items, _, threshold) in enumerate(group):
            vectors = np.stack([np.asarray(it.vector, dtype=np.float32) for it in items])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)   # as the store keeps them
            if threshold is None:
                earlier_ids += [it.id for it in items]
                earlier.append(vectors)
                continue
            stored = self._search(vectors, k=2)   # two: one may be the item's own id, which it replaces
            before = np.concatenate(earlier) @ vectors.T if earlier_ids else None   # (earlier items, this request's)
            before_ids = np.array(earlier_ids, dtype=object)
            within = vectors @ vectors.T
            mine: list[int] = []   # positions of this request's items kept so far
            for pos, (it, hits) in enumerate(zip(items, stored)):
                best = max(((h.score, h.id) for h in hits if h.id != it.id), default=(-2.0, ""))
                if before is not None:
                    col = np.where(before_ids != it.id, before[:, pos], -np.inf)
                    j = int(np.argmax(col))
                    best = max(best, (float(col[j]), earlier_ids[j]))
                for q in mine:
                    if items[q].id != it.id:
                        best = max(best, (float(within[q, pos]), items[q].id))
                if best[0] >= threshold:
                    skipped[r].append(Duplicate(pos, it.id, best[1], round(best[0], 6)))
                else:
                    mine.append(pos)
            kept[r] = [items[q] for q in mine]
            earlier_ids += [items[q].id for q in mine]
            earlier.append(vectors[mine])
        return kept, skipped
