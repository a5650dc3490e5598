"""Rate limits shared by several processes (`app._rate_limit.SharedRateLimiter`, the file `serve --workers N`
gives its workers): one set of buckets for all, a clock set back locks nobody out, and a failing file lets
requests through instead of failing them. The whole service with two workers: tests/app/test_milvus_service.py."""
from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time

from app._rate_limit import SharedRateLimiter


def _take_many(path: str, per_minute: int, client: str, n: int, ready, start, out) -> None:
    limiter = SharedRateLimiter(path, per_minute)
    ready.put(True)
    start.wait()
    out.put(sum(limiter.take(client) == 0.0 for _ in range(n)))


def test_a_worker_that_opens_the_file_while_another_holds_it_locked_waits_instead_of_failing(tmp_path):
    """Workers started together open the file at once; one that met the other's lock (longer than SQLite's
    busy timeout of 2 s, in setting up WAL) failed to start with "database is locked"."""
    import threading

    path = str(tmp_path / "limits.sqlite")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(3.0, holder.execute, args=("COMMIT",))
    released.start()
    try:
        began = time.monotonic()
        limiter = SharedRateLimiter(path, 60)
        assert time.monotonic() - began >= 2.5   # it waited for the lock to go, and then opened the file
        assert limiter.take("ip:10.0.0.9") == 0.0
    finally:
        released.join()
        holder.close()


def test_two_processes_on_one_file_share_each_clients_bucket(tmp_path):
    path = str(tmp_path / "limits.sqlite")
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(path, 200, "ip:10.0.0.1", 400, ready, start, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    ready.get(timeout=60), ready.get(timeout=60)   # both connected: their takes overlap
    began = time.monotonic()
    start.set()
    allowed = [out.get(timeout=60), out.get(timeout=60)]
    for p in procs:
        p.join(60)
    refilled = (time.monotonic() - began) * 200 / 60
    # 200 in all (and what refilled meanwhile), shared between the two; one process alone would take 200
    assert 200 <= sum(allowed) <= 200 + refilled + 1, (allowed, refilled)
    assert SharedRateLimiter(path, 200).take("ip:10.0.0.2") == 0.0   # another client has a bucket of its own


def test_a_bucket_refills_at_the_rate_and_says_how_long_to_wait(tmp_path):
    limiter = SharedRateLimiter(tmp_path / "limits.sqlite", 60)   # one a second
    assert all(limiter.take("k") == 0.0 for _ in range(60))
    wait = limiter.take("k")
    assert 0.9 < wait <= 1.0
    time.sleep(1.05)
    assert limiter.take("k") == 0.0 and limiter.take("k") > 0


def test_a_clock_set_back_does_not_lock_a_client_out(tmp_path):
    path = tmp_path / "limits.sqlite"
    limiter = SharedRateLimiter(path, 10)
    with sqlite3.connect(path) as db:   # a bucket emptied an hour "from now": written before the clock went back
        db.execute("INSERT INTO buckets VALUES ('k', 0, ?)", (time.time() + 3600,))
    assert limiter.take("k") == 0.0


def test_a_failing_file_lets_requests_through_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "limits.sqlite"
    limiter = SharedRateLimiter(path, 1)
    assert limiter.take("k") == 0.0 and limiter.take("k") > 0
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE buckets")
    with caplog.at_level(logging.WARNING, logger="simsearch.app"):
        assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and str(path) in failures[0].getMessage()
