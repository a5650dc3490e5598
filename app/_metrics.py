"""Prometheus metrics, in a registry per app (several apps in one process do not clash).

With several worker processes (`simsearch serve --workers N`, or any process manager that sets
PROMETHEUS_MULTIPROC_DIR), each process writes its counts to files in that folder and a scrape of any
worker reads them all (prometheus_client's multiprocess mode): /metrics counts the requests of every
worker, whichever one answers it."""
from __future__ import annotations

import glob
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest,
                               multiprocess)
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metrics: requests by route and status, embed and search time, gallery size."""

    def __init__(self, follows: bool = False) -> None:
        """follows: this service applies another process's writes (a read-only replica, or a worker beside others
        on one Milvus, refreshing): only then is there a simsearch_index_followed_timestamp_seconds."""
        # Read where prometheus_client reads it (its values live in files there when it is set).
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("simsearch_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("simsearch_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        # A gauge's multiprocess_mode says how the workers' values combine (ignored in one process).
        self.in_flight = Gauge("simsearch_requests_in_flight", "HTTP requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.workers = Gauge("simsearch_worker_processes", "worker processes serving (each counts 1 while it runs)",
                             registry=r, multiprocess_mode="livesum")
        self.workers.set(1)
        self.rejected = Counter("simsearch_rejected_requests", "requests refused by a limit",
                                ["reason"], registry=r)
        self.embed_seconds = Histogram("simsearch_embed_seconds", "time to embed one batch (model forward)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.embed_batch = Histogram("simsearch_embed_batch_size", "images embedded together",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.search_seconds = Histogram("simsearch_search_seconds", "time of one index search call",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.decoded_ahead = Counter("simsearch_decoded_ahead_batches", "batches decoded in the decode thread "
                                     "while the model thread worked on the one before (photos)", registry=r)
        self.slow_decodes = Counter("simsearch_slow_decode_requests", "query requests whose images were decoded "
                                    "apart from the micro-batcher, one at a time, being slow to decode (large PNGs)",
                                    registry=r)
        self.decode_pixels = Gauge("simsearch_decode_pixels_in_flight", "pixels the images POST /index decodes at "
                                   "once hold, as SIMSEARCH_DECODE_PIXELS_IN_FLIGHT counts them (at most it, but "
                                   "for one larger image decoded alone)", registry=r, multiprocess_mode="livesum")
        self.decode_waits = Counter("simsearch_decode_budget_waits", "POST /index requests whose decoding waited "
                                    "for room in SIMSEARCH_DECODE_PIXELS_IN_FLIGHT", registry=r)
        self.decode_seconds = Histogram("simsearch_decode_seconds", "time to decode and preprocess one image",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_requests = Histogram("simsearch_index_commit_requests",
                                         "POST /index requests committed together (one transaction and fsync)",
                                         buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self._gallery_sizes: Callable[[], dict[str, int]] = dict
        self._unopened_sizes: Callable[[], dict[str, int]] | None = None
        self._disk_folder: Path | None = None
        # Read at each scrape from this process's state, not counted: any worker's answer is the answer. The
        # process's own figures (process_resident_memory_bytes: the index lives in memory; CPU seconds, open files)
        # are prometheus_client's, of the process that answers (with several workers, the one the scrape reached).
        self._state = (_GallerySizes(lambda: self._gallery_sizes(), lambda: self._unopened_sizes),
                       _DiskFree(lambda: self._disk_folder),
                       ProcessCollector(registry=None))
        for collector in self._state:
            r.register(collector)
        self.ready = Gauge("simsearch_ready", "1 when the model and index are loaded (in every worker)", registry=r,
                           multiprocess_mode="livemin")
        # Left out where nothing is followed (the writer): a 0 there made `time() - followed > 60` fire on every writer.
        self.followed = Gauge("simsearch_index_followed_timestamp_seconds",
                              "read-only replicas: when the writer's changes were last read (Unix time; alert "
                              "when it falls minutes behind; the oldest worker's)", registry=r,
                              multiprocess_mode="livemin") if follows else None
        self.follow_errors = Counter("simsearch_index_follow_errors",
                                     "read-only replicas: failed reads of the writer's changes", registry=r)
        self.catch_ups = Counter("simsearch_index_catch_ups", "read-only replicas: reads that had the writer's "
                                 "changes applied first, being behind their X-Simsearch-After", registry=r)

    def track_galleries(self, sizes: Callable[[], dict[str, int]],
                        unopened: Callable[[], dict[str, int]] | None = None) -> None:
        """Read each open gallery's size from `sizes()` ({name: items}) at every scrape; and, given `unopened`
        ({name: items} of the galleries this process has not opened, read without opening them: blocking), theirs
        too, read in a thread of its own at most once every UNOPENED_EVERY seconds, so that a sum over galleries
        counts every one."""
        self._gallery_sizes = sizes
        self._unopened_sizes = unopened
        self._state[0].read_unopened()   # now, so that the first scrape has them

    def forget_gallery(self, name: str) -> None:
        """The gallery `name` was deleted: simsearch_gallery_items stops reporting it now, not at the next read of
        the sizes of the galleries not open (up to UNOPENED_EVERY seconds later)."""
        self._state[0].forget(name)

    def track_disk(self, folder: Path) -> None:
        """Read the free space of the disk holding `folder` at every scrape (to alert before it is full)."""
        self._disk_folder = folder

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format: this process's, or with several worker processes
        every worker's counts combined."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self._multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)
        for collector in self._state:
            registry.register(collector)
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is stopping: its gauges (in flight, ready, workers) stop counting."""
        self.workers.set(0)
        if self._multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self._multiprocess_dir)


def _forget_dead_workers(folder: str) -> None:
    """Drop the gauges of workers that died without closing (killed; the process manager starts another),
    so that a killed worker's requests in flight and its `ready` do not count for ever. Counters and
    histograms keep a dead worker's counts: a total never goes back."""
    pids = {os.path.basename(f).rsplit("_", 1)[-1][:-3] for f in glob.glob(os.path.join(folder, "gauge_live*_*.db"))}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


UNOPENED_EVERY = 60.0   # seconds between reads of the sizes of the galleries not open (a read opens each store)
_ITEMS_HELP = ("items in each gallery: an open one's now, one this process has not opened (not used since the "
               "start) as read at most a minute before, without opening it")
_OPEN_ITEMS_HELP = "items in each gallery open in this process (one not used since the start is left out)"


class _GallerySizes:
    """simsearch_gallery_items{gallery} (items in each gallery: the open ones read at each scrape, the others,
    when the service says how, from _UnopenedSizes) and simsearch_galleries (how many are open)."""

    def __init__(self, sizes: Callable[[], dict[str, int]], unopened: Callable[[], Callable | None]):
        self._sizes = sizes
        self._unopened = _UnopenedSizes(unopened)

    def describe(self):
        return []   # the names are known only at a scrape (auto_describe would call collect() at registration)

    def read_unopened(self) -> None:
        """Start reading the sizes of the galleries not open (in the background), when the service reads them."""
        self._unopened.latest(set())

    def forget(self, name: str) -> None:
        """Leave the deleted gallery `name` out of the sizes of the galleries not open."""
        self._unopened.forget(name)

    def collect(self):
        try:
            sizes = self._sizes()
        except Exception:  # noqa: BLE001  (closed during shutdown: no values rather than a failed scrape)
            sizes = {}
        unopened = self._unopened.latest(set(sizes))
        items = GaugeMetricFamily("simsearch_gallery_items", _OPEN_ITEMS_HELP if unopened is None else _ITEMS_HELP,
                                  labels=["gallery"])
        for name, count in {**(unopened or {}), **sizes}.items():
            items.add_metric([name], float(count))
        yield items
        yield GaugeMetricFamily("simsearch_galleries", "galleries open in this process (the default one and named "
                                "ones used since the start)", value=float(len(sizes)))


class _UnopenedSizes:
    """The sizes of the galleries not open, read by `reader()()` (None: the service reads none) in a thread, at
    most once every UNOPENED_EVERY seconds and never two at once: a scrape never waits on it (the read opens each
    store, which for Milvus is a round trip each) and answers the last sizes read."""

    def __init__(self, reader: Callable[[], Callable[[], dict[str, int]] | None]):
        self._reader = reader
        self._sizes: dict[str, int] = {}
        self._read_at = -float("inf")
        self._reading = threading.Lock()
        self._deleted: set[str] = set()   # deleted while a read was under way: left out of what it answers

    def latest(self, open_now: set[str]) -> dict[str, int] | None:
        """The last sizes read, less the galleries open now (counted by the caller); a new read started when
        they are older than UNOPENED_EVERY; None when the service reads none."""
        read = self._reader()
        if read is None:
            return None
        if time.monotonic() - self._read_at >= UNOPENED_EVERY and self._reading.acquire(blocking=False):
            self._read_at = time.monotonic()
            threading.Thread(target=self._read, args=(read,), name="simsearch-gallery-sizes", daemon=True).start()
        for name in open_now & self._sizes.keys():   # counted open from now on: a size read before is stale
            self._sizes.pop(name, None)
        return dict(self._sizes)

    def forget(self, name: str) -> None:
        """The gallery `name` was deleted: out of the sizes now, and out of those of a read under way."""
        self._deleted.add(name)
        self._sizes.pop(name, None)

    def _read(self, read: Callable[[], dict[str, int]]) -> None:
        self._deleted = set()
        try:
            sizes = dict(read())
            for name in self._deleted:   # listed by the read before it was deleted
                sizes.pop(name, None)
            self._sizes = sizes
        except Exception:  # noqa: BLE001  (the data folder or Milvus unreachable now: the last sizes stay)
            pass
        finally:
            self._reading.release()


class _DiskFree:
    """simsearch_data_disk_free_bytes: free space on the disk holding the data folder (writes are refused
    with 507 when it runs out), read at each scrape; none before the service knows its folder."""

    def __init__(self, folder: Callable[[], Path | None]):
        self._folder = folder

    def describe(self):
        return []

    def collect(self):
        folder = self._folder()
        if folder is None:
            return
        try:
            free = float(shutil.disk_usage(folder).free)
        except OSError:  # the folder is gone or the volume unmounted: no value rather than a failed scrape
            free = float("nan")
        yield GaugeMetricFamily("simsearch_data_disk_free_bytes", "free space on the disk holding the index "
                                "(writes are refused with 507 when it runs out)", value=free)
