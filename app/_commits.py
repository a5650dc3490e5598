"""Group commit for POST /index: writes that arrive while one is being committed are committed
together in the next one (one SQLite transaction, one fsync), and each request is acknowledged
only once its own items are durable."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import anyio.to_thread

from ._metrics import Metrics


class GroupCommitter:
    """Serialises `upsert(items)` calls from many requests into as few commits as possible.

    Requests are committed in arrival order, so when two requests give the same id the later one
    wins, as it would one commit after the other (`Store.upsert` keeps the last of duplicate ids).
    If a combined commit fails with `item_error` (an item the store refuses), nothing of it was
    written and each request of the group is committed on its own, so that only the request with
    the bad item fails. Any other error fails the whole group.
    """

    def __init__(self, upsert: Callable[[Sequence[Any]], Any], item_error: type[BaseException],
                 metrics: Metrics):
        self._upsert, self._item_error, self.metrics = upsert, item_error, metrics
        self._pending: list[tuple[list, asyncio.Future]] = []
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

    async def upsert(self, items: Sequence[Any]) -> None:
        """Return once `items` are committed (durable), or raise what the store raised for them."""
        if self._task is None or self._task.done() or self._stopping:
            raise RuntimeError("the index writer is not running")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group = [(items, fut) for items, fut in self._pending if not fut.done()]  # not: client gone
            self._pending.clear()
            if group:
                outcomes = await anyio.to_thread.run_sync(self._commit, group)
                for (_, fut), exc in zip(group, outcomes):
                    if not fut.done():
                        if exc is None:
                            fut.set_result(None)
                        else:
                            fut.set_exception(exc)
            if self._stopping and not self._pending:
                return

    def _commit(self, group: list[tuple[list, asyncio.Future]]) -> list[BaseException | None]:
        self.metrics.commit_requests.observe(len(group))
        try:
            self._upsert([item for items, _ in group for item in items])
            return [None] * len(group)
        except Exception as exc:  # noqa: BLE001  (handed to the requests)
            if len(group) == 1 or not isinstance(exc, self._item_error):
                return [exc] * len(group)
        outcomes: list[BaseException | None] = []
        for items, _ in group:  # find the request with the refused item: one commit each
            try:
                self._upsert(items)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)
        return outcomes
