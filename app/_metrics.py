"""Prometheus metrics, in a registry per app (several apps in one process do not clash)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metrics: requests by route and status, embed and search time, gallery size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("simsearch_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("simsearch_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("simsearch_requests_in_flight", "HTTP requests being served", registry=r)
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
        self.decode_seconds = Histogram("simsearch_decode_seconds", "time to decode and preprocess one image",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_requests = Histogram("simsearch_index_commit_requests",
                                         "POST /index requests committed together (one transaction and fsync)",
                                         buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self._gallery_sizes: Callable[[], dict[str, int]] = dict
        r.register(_GallerySizes(lambda: self._gallery_sizes()))
        self.ready = Gauge("simsearch_ready", "1 when the model and index are loaded", registry=r)
        self.followed = Gauge("simsearch_index_followed_timestamp_seconds",
                              "read-only replicas: when the writer's changes were last read (Unix time; alert "
                              "when it falls minutes behind)", registry=r)
        self.follow_errors = Counter("simsearch_index_follow_errors",
                                     "read-only replicas: failed reads of the writer's changes", registry=r)
        self.catch_ups = Counter("simsearch_index_catch_ups", "read-only replicas: reads that had the writer's "
                                 "changes applied first, being behind their X-Simsearch-After", registry=r)
        self.disk_free = Gauge("simsearch_data_disk_free_bytes", "free space on the disk holding the index "
                               "(writes are refused with 507 when it runs out)", registry=r)

    def track_galleries(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Read each open gallery's size from `sizes()` ({name: items}) at every scrape."""
        self._gallery_sizes = sizes

    def track_disk(self, folder: Path) -> None:
        """Read the free space of the disk holding `folder` at every scrape (to alert before it is full)."""
        def read() -> float:
            try:
                return float(shutil.disk_usage(folder).free)
            except OSError:  # the folder is gone or the volume unmounted: no value rather than a failed scrape
                return float("nan")

        self.disk_free.set_function(read)


class _GallerySizes:
    """simsearch_gallery_items{gallery} (items in each open gallery) and simsearch_galleries (how many are
    open), read at each scrape."""

    def __init__(self, sizes: Callable[[], dict[str, int]]):
        self._sizes = sizes

    def describe(self):
        return []   # the names are known only at a scrape (auto_describe would call collect() at registration)

    def collect(self):
        try:
            sizes = self._sizes()
        except Exception:  # noqa: BLE001  (closed during shutdown: no values rather than a failed scrape)
            sizes = {}
        items = GaugeMetricFamily("simsearch_gallery_items", "items in each open gallery", labels=["gallery"])
        for name, count in sizes.items():
            items.add_metric([name], float(count))
        yield items
        yield GaugeMetricFamily("simsearch_galleries", "galleries open (the default one and named ones)",
                                value=float(len(sizes)))
