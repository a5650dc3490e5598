"""Rate limits: a token bucket per client, in this process's memory (RateLimiter) or in a SQLite file that the
processes of `serve --workers N` share (SharedRateLimiter). AuthMiddleware takes a token a request."""
from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("simsearch.app")


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute, bursts up to `per_minute`.
    Kept in memory for the `max_clients` most recently seen clients."""

    def __init__(self, per_minute: int, max_clients: int = 10_000):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        self._buckets[client], wait = _take_token(tokens, last, now, self.capacity, self.rate)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def _take_token(tokens: float, last: float, now: float, capacity: float,
                rate: float) -> tuple[tuple[float, float], float]:
    """One step of a token bucket: ((tokens, last) after it, 0.0 or the seconds to wait for a token)."""
    if last > now:   # another process's later clock reading, or a clock set back: no time has passed
        now = last
    tokens = min(capacity, tokens + (now - last) * rate)
    if tokens >= 1.0:
        return (tokens - 1.0, now), 0.0
    return (tokens, now), (1.0 - tokens) / rate


class SharedRateLimiter:
    """RateLimiter's token buckets kept in a SQLite file that several processes on one machine share
    (`serve --workers N`), so that a client gets `per_minute` requests in all rather than in each process.
    One short write transaction a request. Should the file fail (a full disk, say), requests are let
    through and the failure is logged: a broken limiter must not take the service down with it."""

    _PRUNE_EVERY = 1000

    def __init__(self, path: Path | str, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.path = path
        self._takes = 0
        self._failing = False
        # Workers started together open the file at once; switching it to WAL takes a lock that SQLite's busy
        # timeout does not wait for, so "database is locked" there is waited out, for 10 s at most.
        deadline = time.monotonic() + 10.0
        while True:
            db = None
            try:
                db = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")   # a crash loses some counts, nothing else
                db.execute("CREATE TABLE IF NOT EXISTS buckets (client TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                           "last REAL NOT NULL) WITHOUT ROWID")
                self._db = db
                break
            except sqlite3.Error as exc:
                if db is not None:
                    db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise RuntimeError(f"rate limit file {path}: {exc}") from None
                time.sleep(0.02)

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        try:
            wait = self._take(client)
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            if not self._failing:
                log.warning("rate limit file %s failed (%s): requests are let through until it works again",
                            self.path, exc)
            self._failing = True
            return 0.0
        if self._failing:
            log.info("rate limit file %s works again", self.path)
            self._failing = False
        return wait

    def _take(self, client: str) -> float:
        db = self._db
        db.execute("BEGIN IMMEDIATE")   # the write lock first: no other process reads the bucket meanwhile
        # one clock for all the processes; a monotonic one would restart with the machine, and the file not
        now = time.time()
        row = db.execute("SELECT tokens, last FROM buckets WHERE client = ?", (client,)).fetchone()
        (tokens, last), wait = _take_token(*(row or (self.capacity, now)), now, self.capacity, self.rate)
        if last > now + 60:   # the clock was set back by more than a minute: start this bucket again from now
            (tokens, last), wait = _take_token(self.capacity, now, now, self.capacity, self.rate)
        db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (client, tokens, last))
        self._takes += 1
        if self._takes % self._PRUNE_EVERY == 0:   # a bucket untouched for a minute is full: as if absent
            db.execute("DELETE FROM buckets WHERE last < ?", (now - self.capacity / self.rate,))
        db.execute("COMMIT")
        return wait

    def close(self) -> None:
        self._db.close()
