"""Refusals said in the log once a run, not once a request: the first refusal of a run at its level, then at most
one line a minute counting those since, and one line when the trouble ends (RefusalRun); the writes a disk refuses
(WriteRefusals) are one such run."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("simsearch.app")


class RefusalRun:
    """A run of refusals (of writes by a full disk, of requests for want of open files), counted so that its log
    says it once and then a line a minute: `_count()` counts one and says what to log, `_end()` ends the run."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval, self._clock = interval, clock
        self._lock = threading.Lock()
        self._began: float | None = None   # when the run of refusals began; None: none now
        self._logged = 0.0                 # when its last line was logged
        self._total = 0                    # refusals in this run
        self._unlogged = 0                 # of them, those since the last line

    def _count(self) -> bool | tuple[int, float]:
        """Count one refusal: True for the first of a run (to be logged as it is), (refusals, seconds) since the
        last line when a line a minute is due, else False."""
        now = self._clock()
        with self._lock:
            self._total += 1
            if self._began is None:
                self._began = self._logged = now
                return True
            self._unlogged += 1
            if now - self._logged < self.interval:
                return False
            count, since, self._unlogged, self._logged = self._unlogged, now - self._logged, 0, now
        return count, since

    def _end(self) -> tuple[int, int, float] | None:
        """End the run, if there is one: (its refusals, those since the last line, its seconds); None without."""
        if self._began is None:
            return None
        now = self._clock()
        with self._lock:
            if self._began is None:
                return None
            ended = self._total, self._unlogged, now - self._began
            self._began, self._total, self._unlogged = None, 0, 0
        return ended


class WriteRefusals(RefusalRun):
    """The log of the writes a disk refuses (full, or failing), which otherwise took one ERROR line each (3,201
    in 15 s from 4 clients): the first refusal of a run is logged as it is, then at most one line a minute counts
    those since, and a line says when a write succeeds again. The metrics count every one (each is a 507 or a
    503 in simsearch_requests_total). Whoever logs a refusal asks refused() first."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(interval, clock)
        self._full = False                 # the last refusal's disk was full

    def refused(self, full: bool) -> bool:
        """Count one refused write: True when it is to be logged (the first of a run); the others are counted,
        and a line a minute says how many."""
        self._full = full
        said = self._count()
        if said is True or said is False:
            return said
        count, since = said
        why = "for lack of disk space" if full else "by the disk"
        log.error("%d more writes refused %s in the last %.0f s (one line a minute while this lasts, and one when "
                  "writes succeed again)", count, why, since)
        return False

    def succeeded(self) -> None:
        """A write succeeded: after refusals, say that writes work again (and how many were refused)."""
        ended = self._end()
        if ended is None:
            return
        total, unlogged, over = ended
        log.warning("writes succeed again: %d were refused %s over %.0f s (%d of them since the last line)", total,
                    "for lack of disk space" if self._full else "by the disk", over, unlogged)
