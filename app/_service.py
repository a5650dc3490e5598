"""The loaded state of one app: the Embedder, the Store and the micro-batcher, loaded in a thread
after startup so that /healthz answers at once and /readyz flips when everything is in place."""
from __future__ import annotations

import asyncio
import difflib
import errno
import gc
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import numpy as np

from ._batcher import MicroBatcher, SearchParams
from ._capacity import FILES_PER_GALLERY, OutOfFiles, PixelBudget, UnopenedCounts, raise_open_file_limit
from ._commits import GroupCommitter
from ._errors import ApiError
from ._images import image_policy
from ._metrics import Metrics
from ._refusals import WriteRefusals
from ._settings import Settings

if TYPE_CHECKING:   # index (FAISS) loads after /healthz answers
    from pathlib import Path

    from index import GalleryStore

log = logging.getLogger("simsearch.app")

DEFAULT_GALLERY = "default"   # index.DEFAULT_GALLERY, without importing index (and FAISS) before /healthz answers
LOCK_RETRY_SECONDS = 2.0   # how often loading tries again for a writer lock another process holds
LOCK_LOG_SECONDS = 60.0    # and how often it says again that it waits
_DROPPED = "its folder was deleted or made anew by the service that writes"   # why a replica forgets a gallery
GALLERY_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"   # the names index.check_gallery_name takes, for FastAPI to check


def follows_writer(settings: Settings) -> bool:
    """Whether the service applies another process's writes every refresh_seconds: a read-only replica, or a
    process beside others on one Milvus (the writer of a DATA folder has nothing to follow)."""
    return bool(settings.read_only or settings.milvus_uri) and settings.refresh_seconds > 0


def _loopback(host: str) -> bool:
    """Whether `host` (SIMSEARCH_HOST) is reached only from this machine: a loopback address, or a name whose
    every address is one."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False   # every address
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in found)


def _serve_with(stored_model: str | None) -> str:
    """What to set to serve a gallery of `stored_model`'s vectors: the bundled artifact when it is one."""
    import model

    found = model.bundled_artifact(stored_model) if stored_model else None
    if found is not None:
        return f"; it was made with the bundled {found.name}: serve it with SIMSEARCH_MODEL_PATH={found}"
    earlier = model.earlier_bundled(stored_model) if stored_model else None
    if earlier is not None:
        return (f"; it was made with {earlier.describe()}: serve it with SIMSEARCH_MODEL_PATH set to that file (or "
                "move the gallery to a model you have: `simsearch index reembed`)")
    return "; serve it with that model's artifact (SIMSEARCH_MODEL_PATH, or simsearch serve --model)"


def too_many_galleries(name: str, cap: int) -> ApiError:
    """The 422 for gallery `name`, which would be one more than SIMSEARCH_MAX_GALLERIES (`cap`)."""
    return ApiError(422, "too_many_galleries", f"this service makes at most {cap} galleries, the default one "
                    f"included (SIMSEARCH_MAX_GALLERIES); {name!r} would be one more")


def gallery_exists(name: str, items: int | None = None) -> ApiError:
    """The 409 for a restore (PUT /galleries/NAME/backup) of gallery `name`, which exists (holding `items`, where
    they were counted)."""
    held = f" and holds {items} items" if items else ""
    default = (" (the default gallery always exists and cannot be deleted: without replace=true a backup takes "
               "its place only while it is empty)" if name == DEFAULT_GALLERY else "")
    return ApiError(409, "gallery_exists", f"gallery {name!r} exists{held}{default}: a backup is restored as a new "
                    f"gallery unless asked to replace it: PUT /galleries/{name}/backup?replace=true replaces it "
                    f"(GET /galleries/{name}/backup first keeps a copy), or restore under another name")


@dataclass
class Gallery:
    """One gallery the service has open: its store, and (when it writes) its group committer."""

    name: str
    store: GalleryStore                  # index.Store or index.MilvusStore
    commits: GroupCommitter | None



class Service:
    """Holds the model and the index once loaded; `ready` is True from then on, and `reason` says
    what is missing (still loading, or why loading failed) until it is."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.image_policy = image_policy(settings.image_formats.split(","))
        self.embedder = None
        self.pddm = None     # the artifact's PDDM head (model.PDDM), when it has one
        self.batcher: MicroBatcher | None = None
        self.galleries: dict[str, Gallery] = {}   # open ones by name; the default one once loaded
        self._gallery_lock = asyncio.Lock()        # one gallery opened or dropped at a time
        # Galleries a restore is replacing, with the items each held: listed while they are away (closed, their
        # folder swapped), as they exist throughout for a client (GET /galleries left them out or closed)
        self._replacing: dict[str, int] = {}
        self._replacing_changes = 0   # restores begun and ended: a listing they overlapped is made again
        self.ready = False
        self.reason = "loading the model and the index"
        self.started = time.time()
        self._load_task: asyncio.Task | None = None
        self._follow_task: asyncio.Task | None = None
        self._catch_up_lock = asyncio.Lock()   # one on-demand refresh at a time (catch_up)
        self._stopping = False
        self._stop_event = asyncio.Event()   # set by stop(): a load waiting for the store gives up at once
        self._lock_waited: float | None = None   # when loading began to wait for another process's writer lock
        self._lock_logged = 0.0
        self.refusals = WriteRefusals()   # the log of writes the disk refuses
        self.files_refusals = OutOfFiles()   # the answer and the log when the process runs out of open files
        self.unopened_counts = UnopenedCounts()   # the items of the galleries not open, read again when changed
        self.decode_limiter: anyio.CapacityLimiter | None = None
        self.decode_budget = PixelBudget(settings.decode_pixels_in_flight, metrics)
        self.slow_decode_limiter: anyio.CapacityLimiter | None = None
        self.slow_decodes_waiting = 0   # requests in or waiting for slow_decode_limiter (on the event loop: no lock)
        self.open_files: tuple[int, int, int] | None = None   # RLIMIT_NOFILE: (soft at start, soft now, hard)

    async def start(self) -> None:
        """Begin loading in the background (returns at once)."""
        self.open_files = raise_open_file_limit()
        self._log_limits()
        # POST /index decodes in as many threads at once as there are cores (more would only wait for the CPU),
        # and as many as hold at most SIMSEARCH_DECODE_PIXELS_IN_FLIGHT pixels in all (decode_budget)
        self.decode_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        # A query image slow to decode (a large PNG) is decoded here, one at a time, not in the micro-batcher,
        # whose batches of everyone else's queries would wait behind it (app/_embedding.py, _embedded).
        self.slow_decode_limiter = anyio.CapacityLimiter(1)
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="simsearch-load")

    def _log_limits(self) -> None:
        """One line with the limits in force, and a warning when anyone who reaches the port can write."""
        s = self.settings
        keyed = s.api_key is not None or s.api_key_file is not None
        if s.read_only:
            writes = "none (read-only)"
        elif keyed:
            writes = "need an API key" + (", reads too" if s.require_key_for_reads else "")
        else:
            writes = "need no API key"
        log.info("limits: writes %s; rate limit %s; request bodies up to %s bytes (%s); %s; images up to %s pixels; "
                 "%s", writes, f"{s.rate_limit_per_minute} a minute per key or client IP" if s.rate_limit_per_minute
                 else "off", f"{s.max_body_bytes:,}", f"stalled {s.body_timeout_seconds:g} s: cut"
                 if s.body_timeout_seconds else "no body timeout", f"at most {s.max_concurrency} requests in flight"
                 if s.max_concurrency else "no cap on requests in flight", f"{s.max_pixels:,}",
                 self._open_files_said())
        files = self.open_files
        need = (FILES_PER_GALLERY + 2) * s.max_galleries + 64   # 6 each while read, and the service's own
        if files is not None and 0 <= files[1] < need and not s.milvus_uri:
            log.warning("the open-file limit (RLIMIT_NOFILE soft %d, hard %s) is below the about %d files that %d "
                        "open galleries hold (SIMSEARCH_MAX_GALLERIES; about %d each at rest, %d while read): "
                        "galleries past about %d are refused (503 out_of_files) until the limit is raised (ulimit -n, "
                        "systemd LimitNOFILE=, docker --ulimit nofile=) or SIMSEARCH_MAX_GALLERIES lowered", files[1],
                        "unlimited" if files[2] < 0 else files[2], need, s.max_galleries, FILES_PER_GALLERY,
                        FILES_PER_GALLERY + 2, max(1, (files[1] - 64) // FILES_PER_GALLERY))
        if not keyed and not s.read_only and not _loopback(s.host):
            log.warning("writes need no API key and the service listens on %s: anyone who reaches port %d can add, "
                        "change and delete items and galleries. Set SIMSEARCH_API_KEY (or SIMSEARCH_API_KEY_FILE, "
                        "simsearch serve --api-key-file) to require a key", s.host or "every address", s.port)

    def _open_files_said(self) -> str:
        """The open-file limit in words, for the line of limits: the soft limit (and what it was raised from), the
        hard one."""
        if self.open_files is None:
            return "open files: no limit known"
        before, soft, hard = (f"{v:,}" if v >= 0 else "unlimited" for v in self.open_files)
        raised = f", raised from {before}" if self.open_files[0] != self.open_files[1] else ""
        return f"open files up to {soft} (RLIMIT_NOFILE soft{raised}; hard {hard})"

    async def wait_loaded(self) -> None:
        """Wait until loading has finished (successfully or not)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def stop(self) -> None:
        """Stop the batcher and close the store (waits for a load in progress to finish first)."""
        self._stopping = True   # a load waiting for the store (read-only) or for the writer lock gives up
        self._stop_event.set()
        if self._load_task is not None and not self._load_task.done():
            try:
                await self._load_task
            except BaseException:  # noqa: BLE001
                pass
        self.ready = False
        self.reason = "shutting down"
        self.metrics.ready.set(0)
        if self._follow_task is not None:
            self._follow_task.cancel()
            try:
                await self._follow_task
            except asyncio.CancelledError:
                pass
        if self.batcher is not None:
            await self.batcher.stop()
        for g in list(self.galleries.values()):
            if g.commits is not None:
                await g.commits.stop()
            await anyio.to_thread.run_sync(g.store.close)

    def _open_model(self):
        import model

        path = self.settings.resolved_model_path()
        try:
            model.import_models(self.settings.model_modules)
        except model.ModelModuleError as exc:
            raise RuntimeError(f"SIMSEARCH_MODEL_MODULES: {exc}") from None
        try:
            embedder = model.Embedder.from_file(path, device=self.settings.device, trace=self.settings.trace_model,
                                                runtime=self.settings.runtime)
        except FileNotFoundError:
            raise RuntimeError(f"the model artifact {path} does not exist (set SIMSEARCH_MODEL_PATH)") from None
        except Exception as exc:
            detail = str(exc).removeprefix(f"{path}: ")   # the model's errors name the file already
            raise RuntimeError(f"cannot load the model artifact {path}: {detail}") from exc
        self.pddm = model.PDDM.from_artifact(embedder.artifact)
        return embedder

    def _open_store(self, embedder, name: str = DEFAULT_GALLERY):
        import index

        s = self.settings
        if s.milvus_uri:
            return self._open_milvus(embedder, name)
        cfg = index.StoreConfig(path=index.gallery_path(s.data_dir, name), dim=embedder.dim, model_id=embedder.model_id,
                                index=s.index, use_gpu=False if str(embedder.device) == "cpu" else None,
                                read_only=s.read_only)
        try:
            store = index.Store.open(cfg)
        except (index.StoreMissingError, index.StoreLockedError):  # _load waits for the writer to make it, or to go
            raise
        except index.ModelMismatchError as exc:
            raise RuntimeError(f"cannot open the index at {cfg.path}: {exc}{_serve_with(exc.stored_model)}") from exc
        except Exception as exc:
            hint = ("; the disk is read-only: to serve the index as it is, set SIMSEARCH_READ_ONLY=true "
                    "(simsearch serve --read-only)" if getattr(exc, "errno", None) == errno.EROFS else "")
            raise RuntimeError(f"cannot open the index at {cfg.path}: {exc}{hint}") from exc
        unfinished = index.incomplete(cfg.path)
        if unfinished:   # served as it is (a part of its source is still a gallery), and said
            log.warning("gallery %r: %s", name, unfinished)
        if s.filter_keys:  # before ready, so that no search waits for a key's index
            t0 = time.perf_counter()
            values = store.index_metadata(s.filter_keys.split(","))
            log.info("metadata keys indexed for filters in %.1f s: %s", time.perf_counter() - t0,
                     ", ".join(f"{k} ({n} values)" for k, n in values.items()))
        return store

    def _open_milvus(self, embedder, name: str):
        import index

        s = self.settings
        cfg = index.MilvusConfig(s.milvus_uri, token=s.milvus_token_value(), db_name=s.milvus_db, gallery=name,
                                 dim=embedder.dim, model_id=embedder.model_id, index=s.index, read_only=s.read_only)
        try:
            store = index.MilvusStore.open(cfg)
        except (index.StoreMissingError, index.ModelMismatchError):
            raise
        except Exception as exc:
            raise RuntimeError(f"cannot open gallery {name!r} in Milvus: {exc}") from exc
        # SIMSEARCH_FILTER_KEYS builds nothing here: Milvus filters without an index of simsearch's, and
        # counting each key's values would read every item's metadata at every gallery's opening
        return store

    def _workers_lock(self):
        """The lock the processes of one machine share for `skip_duplicates` (a file in SIMSEARCH_WORKERS_DIR),
        or None for a process on its own."""
        if self.settings.workers_dir is None:
            return None
        from filelock import FileLock

        return FileLock(self.settings.workers_dir / "skip-duplicates.lock")

    def _serve(self, name: str, store, writes: bool = True) -> Gallery:
        """Serve `store` as gallery `name` (in place of any served under that name); with `writes`, its group
        committer started, through which every write to it goes."""
        import index

        commits = None
        if writes:
            commits = GroupCommitter(store.upsert, index.InvalidItemError, self.metrics, store.search,
                                     self._workers_lock())
            commits.start()
        g = self.galleries[name] = Gallery(name, store, commits)
        return g

    def gallery_names(self) -> list[str]:
        """The galleries that exist (in the data folder, or in Milvus), the default first. Blocking."""
        import index

        s = self.settings
        if s.milvus_uri:
            return index.milvus_gallery_names(s.milvus_uri, s.milvus_token_value(), s.milvus_db)
        return index.gallery_names(s.data_dir)

    def galleries_listed(self) -> list[tuple[str, int, bool]]:
        """Each gallery's (name, items, open), the default first: an open one counted by its store, another read
        without opening it, one a restore is replacing with the items it held until the new one is served. A
        listing that a replace began or ended during is made again (its folder may have been away while the names
        were read), a few times at most. Blocking."""
        for _ in range(20):
            changes = self._replacing_changes
            rows = self._galleries_listed(dict(self._replacing))
            if changes == self._replacing_changes:
                break
        return rows

    def _galleries_listed(self, replacing: dict[str, int]) -> list[tuple[str, int, bool]]:
        names = self.gallery_names()
        if not self.settings.milvus_uri:   # the counts of galleries deleted since: forgotten
            self.unopened_counts.keep_only({self._db_file(name) for name in names})
        out = []
        for name in names + sorted(set(replacing) - set(names)):
            g = self.galleries.get(name)
            if g is not None:
                try:
                    out.append((name, g.store.count(), True))
                    continue
                except Exception:  # noqa: BLE001  (closed this moment by a drop or a restore: read it as below)
                    pass
            count = replacing.get(name)
            if count is None:
                count = self.unopened_count(name)
            if count is not None:
                out.append((name, count, False))
        return out

    def unopened_count(self, name: str) -> int | None:
        """Items in a gallery this process has not opened, read without opening it (None: gone). Blocking."""
        import index

        s = self.settings
        try:
            if s.milvus_uri:
                with index.MilvusStore.open(index.MilvusConfig(s.milvus_uri, token=s.milvus_token_value(),
                                                               db_name=s.milvus_db, gallery=name,
                                                               read_only=True)) as store:
                    return store.count()
            def read() -> int:
                with index.StoreReader(index.gallery_path(s.data_dir, name)) as reader:
                    return reader.count()

            return self.unopened_counts.count(self._db_file(name), read)
        except index.StoreError as exc:   # deleted, or being made, this moment; or no file to read it with
            refused = self.files_refusals.answer(exc, f"gallery {name!r} was not read")
            if refused is not None:   # not left out of a listing as if it were gone
                raise refused from None
            return None

    def _db_file(self, name: str) -> str:
        """The database file of gallery `name` (a name index.gallery_names listed) in the data folder: as
        index.gallery_path places it, joined as strings (pathlib's took most of a listing's time at 1000)."""
        if name == DEFAULT_GALLERY:
            return os.path.join(self.settings.data_dir, "index", "store.sqlite3")
        return os.path.join(self.settings.data_dir, "galleries", name, "index", "store.sqlite3")

    async def items_held(self, name: str) -> int:
        """The items of gallery `name`, which exists: counted by its open store, or read without opening it (0 for
        one gone meanwhile)."""
        g = self.galleries.get(name)
        if g is not None:
            return await anyio.to_thread.run_sync(g.store.count)
        return await anyio.to_thread.run_sync(self.unopened_count, name) or 0

    def _remove_gallery(self, name: str) -> None:
        """Delete what holds the named gallery: its folder, or its Milvus collection. Blocking."""
        import index

        s = self.settings
        if s.milvus_uri:
            index.drop_milvus_gallery(s.milvus_uri, name, s.milvus_token_value(), s.milvus_db)
        else:
            index.remove_gallery(s.data_dir, name)

    async def _load(self) -> None:
        import index

        t0 = time.perf_counter()
        try:
            embedder = await anyio.to_thread.run_sync(self._open_model)
            while True:
                try:
                    store = await anyio.to_thread.run_sync(self._open_store, embedder)
                    break
                except index.StoreMissingError as exc:  # read-only, before the writer made the store
                    if not self.reason.startswith("waiting"):
                        log.warning("read-only: waiting for the service that writes to create the store (%s)", exc)
                    self.reason = f"waiting for the service that writes to create the store: {exc}"
                    if await self._paused(1.0):
                        return
                except index.StoreLockedError as exc:  # another writer (the old instance of a rolling update)
                    self._waiting_for_lock(exc)
                    if await self._paused(LOCK_RETRY_SECONDS):
                        return
        except Exception as exc:  # noqa: BLE001  (reported by /readyz; /healthz keeps answering)
            self.reason = str(exc)
            log.error("not ready: %s", exc)
            return
        self.embedder = embedder
        s = self.settings
        self.batcher = MicroBatcher(embedder.embed_arrays, self.search, s.batch_max_size,
                                    s.batch_max_wait_ms / 1000.0, self.metrics)
        self.batcher.start()
        self._serve(DEFAULT_GALLERY, store)
        if not (s.read_only or s.milvus_uri):   # the writer: what deleted galleries left behind goes
            left = await anyio.to_thread.run_sync(index.remove_deleted_galleries, s.data_dir)
            if left:
                log.info("removed %d folders left on disk by deleted galleries or restores cut off", left)
        self.metrics.track_galleries(self._gallery_sizes, self._unopened_sizes)
        self.metrics.track_disk(s.data_dir)
        # Move everything loaded so far (torch, FAISS, the store's id tables) out of the garbage
        # collector's reach: a full collection over it took 110 ms, and under load one ran every
        # few seconds, which was the p99 of /search (docs/results/benchmarks.md).
        await anyio.to_thread.run_sync(gc.collect)
        gc.freeze()
        if follows_writer(s):
            self._followed_now()   # the store as opened is the writer's state now
            self._follow_task = asyncio.get_running_loop().create_task(self._follow(), name="simsearch-follow")
        if self._lock_waited is not None:
            log.warning("index: the writer lock of %s is free: opened it after waiting %.0f s", self._data_index(),
                        time.perf_counter() - self._lock_waited)
        self.metrics.ready.set(1)
        self.ready = True
        self.reason = ""
        log.info("ready in %.1f s: model %s (test-time augmentation %s, %s), index %s (%d items%s), "
                 "uploads as %s", time.perf_counter() - t0, embedder.model_id, embedder.meta.tta,
                 embedder.runtime, store.spec, store.count(),
                 ", read-only" if s.read_only else "",
                 ", ".join(self.image_policy.allowed))

    async def _paused(self, seconds: float) -> bool:
        """Wait `seconds`, or less when the service stops: True when it is stopping."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self._stopping

    def _data_index(self) -> str:
        import index

        return str(index.gallery_path(self.settings.data_dir, DEFAULT_GALLERY))

    def _waiting_for_lock(self, exc: Exception) -> None:
        """Another process holds the index's writer lock: say so on /readyz, in operator words, and in the log
        once, then once a minute (not at every try)."""
        pid = getattr(exc, "pid", None)
        holder = f"another process (pid {pid})" if pid else "another process"
        self.reason = (f"waiting for the writer lock of the index at {self._data_index()}, which {holder} holds "
                       f"(one process at a time writes an index). Retrying every {LOCK_RETRY_SECONDS:g} s: this "
                       "service becomes ready once that process exits. Stop it, or set SIMSEARCH_READ_ONLY=true "
                       "(simsearch serve --read-only) to serve the index beside it as a read-only replica")
        now = time.perf_counter()
        if self._lock_waited is None:
            self._lock_waited = self._lock_logged = now
            log.warning("not ready yet: %s", self.reason)
        elif now - self._lock_logged >= LOCK_LOG_SECONDS:
            self._lock_logged = now
            log.warning("not ready yet: still waiting (%.0f s) for the writer lock of %s, held by %s",
                        now - self._lock_waited, self._data_index(), holder)

    async def _follow(self) -> None:
        """Read-only: apply another process's writes to each open gallery every refresh_seconds; forget a
        gallery whose folder was deleted or made anew (it is opened again when next asked for)."""
        last_error: dict[str, str] = {}   # by gallery: each error is logged once, until it clears
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            for g in list(self.galleries.values()):
                try:
                    if await anyio.to_thread.run_sync(self._dropped_by_writer, g, False):
                        if g.name == DEFAULT_GALLERY:   # never forgotten: the new store is served in its place
                            async with self._gallery_lock:
                                if self.galleries.get(g.name) is g:
                                    await self._reopened_default(g)
                        else:
                            await self._forget(g, _DROPPED)
                        continue
                    await anyio.to_thread.run_sync(self._refresh, g.store)
                except Exception as exc:  # noqa: BLE001  (searches go on with what was read before)
                    if self.galleries.get(g.name) is not g:   # closed meanwhile by a drop or a request: nothing to say
                        continue
                    if str(exc) != last_error.get(g.name):
                        log.error("index: cannot read the writer's changes to gallery %s: %s; serving it as last "
                                  "read", g.name, exc)
                        last_error[g.name] = str(exc)
                    continue
                if last_error.pop(g.name, None) is not None:
                    log.info("index: reading the writer's changes to gallery %s again", g.name)

    def _gallery_sizes(self) -> dict[str, int]:
        """Items in each open gallery (for the metrics)."""
        sizes = {}
        for name, g in list(self.galleries.items()):
            try:
                sizes[name] = g.store.count()
            except Exception:  # noqa: BLE001  (closed this moment: left out of this scrape)
                continue
        return sizes

    def _unopened_sizes(self) -> dict[str, int]:
        """Items in each gallery this process has not opened, read without opening them (for the metrics, which
        call it in a thread of their own at most once a minute). Blocking."""
        sizes = {}
        for name in self.gallery_names():
            if name not in self.galleries and (count := self.unopened_count(name)) is not None:
                sizes[name] = count
        return sizes

    def _refresh(self, store) -> None:
        """Read-only: apply the writer's changes now (blocking), counting failures in the metrics."""
        try:
            added, removed, changed = store.refresh()
        except Exception:
            self.metrics.follow_errors.inc()
            raise
        self._followed_now()
        if added or removed or changed:
            log.info("index: followed the writer: %d added, %d removed, %d edited (%d items in all)",
                     added, removed, changed, store.count())

    def _followed_now(self) -> None:
        if self.metrics.followed is not None:   # none where nothing is followed (a replica with refresh 0)
            self.metrics.followed.set_to_current_time()

    async def gallery(self, name: str, create: bool = False) -> Gallery:
        """The open gallery `name` (a valid name: the HTTP layer checks it), opened now when it is on disk
        but not open yet; with create, made when it does not exist (open_gallery)."""
        g, _ = await self.open_gallery(name, create)
        return g

    async def open_gallery(self, name: str, create: bool = False, by: str = "a write") -> tuple[Gallery, bool]:
        """The open gallery `name` (a valid name: the HTTP layer checks it), and whether this call made it:
        opened now when it is on disk but not open yet; with create, made when it does not exist (logged once,
        saying `by` what). 404 when it does not exist (and is not to be made), naming the nearest names and how
        to make one; 422 when it is to be made and SIMSEARCH_MAX_GALLERIES exist already. Read-only, a named
        gallery the writer dropped (or dropped and made again) since it was opened is forgotten at once, not at
        the next refresh: 404, or the new one."""
        g = self.galleries.get(name)
        if g is not None and not self._dropped_by_writer(g):
            return g, False
        import index

        async with self._gallery_lock:
            g = self.galleries.get(name)
            if g is not None:
                if not self._dropped_by_writer(g):
                    return g, False
                if name == DEFAULT_GALLERY:
                    return await self._reopened_default(g), False
                await self._forget(g, _DROPPED)
            s = self.settings
            names = await anyio.to_thread.run_sync(self.gallery_names)
            exists = name in names
            if not exists and not (create and not s.read_only):
                raise ApiError(404, "gallery_not_found", self._not_found(name, names))
            # The cap is on making galleries: one already there always opens (a restart with a lower cap, or with
            # more galleries than a first use would open, still serves every one of them).
            if not exists and len(names) >= s.max_galleries:
                raise too_many_galleries(name, s.max_galleries)
            try:
                store = await anyio.to_thread.run_sync(self._open_store, self.embedder, name)
            except index.StoreMissingError:   # read-only, and the writer has not finished making it
                raise ApiError(404, "gallery_not_found", f"no gallery named {name!r} yet") from None
            except Exception as exc:  # noqa: BLE001  (the path and the cause go to the log)
                raise await self._not_opened(name, exists, exc) from None
            g = self._serve(name, store, writes=not s.read_only)
            self.files_refusals.recovered()
            log.info("gallery %s %s: %d items", name, "opened" if exists else f"made by {by}", store.count())
            return g, not exists

    def _not_found(self, name: str, names: list[str]) -> str:
        """The 404's message for gallery `name`, which is none of `names`: the names spelt nearest, and how a
        gallery is made here."""
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        did = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        if self.settings.read_only:
            return f"no gallery named {name!r} (galleries are made through the service that writes (this one is " \
                   f"read-only)){did}"
        if self.settings.create_galleries_on_write:
            return f"no gallery named {name!r} (POST /index?gallery=NAME makes one){did}"
        return (f"no gallery named {name!r}; this service makes a gallery only when asked "
                f"(SIMSEARCH_CREATE_GALLERIES_ON_WRITE is false): PUT /galleries/{name} makes it (`simsearch "
                f"galleries create {name} --url URL`){did}")

    async def _not_opened(self, name: str, exists: bool, exc: Exception) -> ApiError:
        """The answer to gallery `name` failing to open (or be made) with `exc`, which is logged: 507 for a full
        disk, 409 for a gallery of another model's vectors (no retry opens it), else 503; a gallery half-made is
        removed first, so that nothing of it is listed."""
        import index

        s = self.settings
        if not exists and not s.milvus_uri:   # nothing half-made is left to be listed as a gallery
            await anyio.to_thread.run_sync(
                lambda: shutil.rmtree(index.gallery_path(s.data_dir, name).parent, ignore_errors=True))
        cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ is not None else exc
        if (isinstance(cause, index.StorageError) and cause.full) or getattr(cause, "errno", None) == errno.ENOSPC:
            if self.refusals.refused(full=True):
                log.error("index: gallery %s not made: %s", name, cause)
            return ApiError(507, "insufficient_storage", f"the service's disk is full: gallery {name!r} was "
                            "not made and nothing was stored; retry once the operator has freed space")
        if isinstance(cause, index.ModelMismatchError):   # permanent: no retry would open it
            log.warning("index: gallery %s not opened: %s", name, cause)
            return self._other_model(name, cause.stored_model)
        refused = self.files_refusals.answer(exc, f"gallery {name!r} was not {'opened' if exists else 'made'}")
        if refused is not None:
            return refused
        log.error("index: cannot open gallery %s: %s", name, exc)
        return ApiError(503, "index_unavailable", f"gallery {name!r} cannot be opened just now; the "
                        "service's log says why", {"Retry-After": "5"})

    def _other_model(self, name: str, stored_model: str | None) -> ApiError:
        """The 409 for gallery `name`, which holds the vectors of `stored_model`, not of this service's model."""
        return ApiError(409, "model_mismatch",
                        f"gallery {name!r} holds the vectors of model {stored_model!r}, not of {self.model_id!r}, the "
                        "model this service embeds with, so it cannot be searched or written here: serve it with a "
                        f"service of that model, move it to this one (`simsearch index reembed DEST --data DATA "
                        f"--gallery {name} --model NEW`, then serve DEST), or delete it (DELETE /galleries/{name}; "
                        f"GET /galleries/{name}/backup first keeps a copy)")

    def _dropped_by_writer(self, g: Gallery, request: bool = True) -> bool:
        # read-only: one stat of the database file, so that a replica never answers from a gallery that no
        # longer exists. In Milvus, where any process may drop a gallery, the check is a round trip: the
        # follow loop makes it (request=False); a request meanwhile gets the store's StoreClosedError (503)
        # The default gallery is never dropped, but a restore (PUT /galleries/default/backup) replaces its store
        # by a rename, which a replica notices as for a named gallery (and opens anew: _reopened_default)
        if self.settings.milvus_uri:
            return g.name != DEFAULT_GALLERY and not request and g.store.folder_changed()
        return self.settings.read_only and g.store.folder_changed()

    async def _reopened_default(self, g: Gallery) -> Gallery:
        """Read-only (the gallery lock held): the default gallery `g`, whose store the writer replaced (a restore),
        opened anew and served in its place, `g` closed; `g` itself, served as last read, while the new store does
        not open yet (the moment between the writer's two renames): a later request or refresh tries again."""
        try:
            store = await anyio.to_thread.run_sync(self._open_store, self.embedder, DEFAULT_GALLERY)
        except Exception as exc:  # noqa: BLE001  (the old store still reads; said in the log)
            log.warning("index: the default gallery's store was replaced by the service that writes and does not open "
                        "yet (%s); serving it as last read", exc)
            return g
        if g.commits is not None:
            await g.commits.stop()
        new = self._serve(DEFAULT_GALLERY, store, writes=g.commits is not None)
        await anyio.to_thread.run_sync(g.store.close)
        log.info("gallery %s opened anew: its store was replaced by the service that writes (a restore): %d items",
                 DEFAULT_GALLERY, store.count())
        return new

    async def drop_gallery(self, name: str) -> int:
        """Delete the named gallery `name` (not the default one) and its folder; the items it held."""
        if name == DEFAULT_GALLERY:
            raise ApiError(422, "invalid_gallery", "the default gallery cannot be deleted (delete its items with "
                           "DELETE /index?label=... or ?where=...)")
        try:
            g = await self.gallery(name)   # open: this process holds its lock, so no other writer has it
        except ApiError as exc:
            if exc.code != "model_mismatch":
                raise
            return await self._drop_other_model(name)
        async with self._gallery_lock:
            if self.galleries.get(name) is not g:   # another request dropped it meanwhile
                raise ApiError(404, "gallery_not_found", f"no gallery named {name!r} (just deleted)")
            count = await anyio.to_thread.run_sync(g.store.count)
            await self._forget(g, "deleted")
            await anyio.to_thread.run_sync(self._remove_gallery, name)
        self.metrics.forget_gallery(name)   # its size read before it was opened: not reported for up to a minute
        return count

    async def restore_gallery(self, name: str, stage: Path, replace: bool = False) -> tuple[Gallery, int, int | None]:
        """Serve as gallery `name` the checked store that index.receive_backup put in the folder `stage`, which lies
        in the data folder (its disk: placing it is one rename): its folder moved to its place, opened (its FAISS
        index built from the stored vectors, as at any opening) and served. Returns it, its items (counted before
        another request may replace or drop it), and the items of the gallery it replaced (None where none was). A
        gallery of that name is replaced only with `replace` (the default one, which always exists and cannot be
        deleted, also while it holds no items); else 409
        gallery_exists. The one replaced stops taking writes, has what is queued committed, and is closed; its
        folder is moved into `stage`, which the caller removes. 422 too_many_galleries as for a gallery made. A
        store that does not take its place or open is moved back into `stage`, and the gallery it was to replace
        put back and served again: the data folder and the service are as they were."""
        import index

        s = self.settings
        source, place = index.gallery_path(stage, name), index.gallery_path(s.data_dir, name)
        if name != DEFAULT_GALLERY:   # the whole folder (DATA/galleries/NAME): one rename
            source, place = source.parent, place.parent
        async with self._gallery_lock:   # no request opens, makes or drops a gallery meanwhile
            names = await anyio.to_thread.run_sync(self.gallery_names)
            exists = name in names
            taken, replaced = None, None
            if not exists and len(names) >= s.max_galleries:
                raise too_many_galleries(name, s.max_galleries)
            if exists and not replace and name != DEFAULT_GALLERY:
                raise gallery_exists(name)
            try:
                if exists:
                    taken, replaced = await self._take_for_restore(name, empty_only=not replace)
                aside = stage / "replaced" if exists else None
                try:
                    store = await anyio.to_thread.run_sync(self._place_restored, name, source, place, aside)
                except BaseException as exc:
                    if taken is not None:
                        await self._serve_again(taken)
                    if isinstance(exc, Exception):
                        raise self._not_restored(name, exc) from None
                    raise
                g = self._serve(name, store)   # the route logs it, with what it held
            finally:
                if self._replacing.pop(name, None) is not None:
                    self._replacing_changes += 1
            return g, await anyio.to_thread.run_sync(store.count), replaced

    async def _take_for_restore(self, name: str, empty_only: bool) -> tuple[Gallery | None, int]:
        """Gallery `name`, which a restore is to replace, and its items: stopped taking writes (what is queued is
        committed first, and counted), closed and no longer served; None for one not open (counted without
        opening it; one of another model's vectors is never opened). With `empty_only`, 409 gallery_exists naming
        its items when it holds some, and it goes on serving: counted before its writes are stopped, so that a
        restore refused leaves them alone (and again after, for what was queued meanwhile)."""
        g = self.galleries.get(name)
        if g is None:
            count = await anyio.to_thread.run_sync(self.unopened_count, name) or 0
        else:
            if empty_only and (count := await anyio.to_thread.run_sync(g.store.count)):
                raise gallery_exists(name, count)
            if g.commits is not None:
                await g.commits.stop()   # a write from now on is refused (503), never acknowledged and lost
            count = await anyio.to_thread.run_sync(g.store.count)
        if empty_only and count:   # written while the queue was stopped: it serves on
            if g is not None and g.commits is not None:
                g.commits.start()
            raise gallery_exists(name, count)
        self._replacing[name] = count   # listed with these items until the new one is served (galleries_listed)
        self._replacing_changes += 1
        if g is not None:
            del self.galleries[name]
            await anyio.to_thread.run_sync(g.store.close)
        return g, count

    async def _serve_again(self, g: Gallery) -> None:
        """Gallery `g`, closed by _take_for_restore, opened and served again (the restore failed)."""
        try:
            store = await anyio.to_thread.run_sync(self._open_store, self.embedder, g.name)
        except Exception as exc:  # noqa: BLE001  (it opens again at its next request)
            log.error("index: gallery %s not opened again after a failed restore: %s", g.name, exc)
            return
        self._serve(g.name, store)

    def _place_restored(self, name: str, source: Path, place: Path, aside: Path | None) -> GalleryStore:
        """Move the folder `source` to `place` (the store there before it, the default gallery's, first to
        `aside`) and open it; on any failure each is moved back. Blocking."""
        if aside is not None:
            place.rename(aside)
        try:
            place.parent.mkdir(exist_ok=True)   # DATA/galleries, before the first named gallery
            source.rename(place)   # refused (ENOTEMPTY) where a folder is in the way
            try:
                return self._open_store(self.embedder, name)
            except BaseException:
                place.rename(source)
                raise
        except BaseException:
            if aside is not None:
                aside.rename(place)
            raise

    def _not_restored(self, name: str, exc: Exception) -> ApiError:
        """The answer to a restored gallery `name` that did not take its place or open (`exc`, logged): 507 for a
        full disk, 422 not_a_store where the file is the cause (no retry opens it), else 503 with Retry-After (the
        disk, a lock, a store being closed: passing)."""
        import index

        if isinstance(exc, ApiError):
            return exc
        cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ is not None else exc
        full = (isinstance(cause, index.StorageError) and cause.full) or getattr(cause, "errno", None) == errno.ENOSPC
        refused = None if full else self.files_refusals.answer(exc, f"gallery {name!r} was not restored (nothing of "
                                                                    "it was kept)")
        if refused is not None:
            return refused
        log.error("index: gallery %s not restored: %s", name, exc)
        if full:
            return ApiError(507, "insufficient_storage", f"the service's disk filled while gallery {name!r} was "
                            "opened: it was not restored and nothing of it was kept; retry once the operator has "
                            "freed space")
        passing = (OSError, index.StorageError, index.StoreLockedError, index.StoreMissingError,
                   index.StoreClosedError, index.StoreUnavailableError)
        if not isinstance(cause, passing):   # the file's own doing (every check passed): no retry opens it
            why = re.sub(re.escape(str(self.settings.data_dir)) + r"\S*", "the store", str(cause))[:300]
            return ApiError(422, "not_a_store", f"the file received for gallery {name!r} passed the checks of a store "
                            f"but does not open as one ({type(cause).__name__}: {why}); nothing of it was kept")
        return ApiError(503, "index_unavailable", f"gallery {name!r} could not be restored: the received store did "
                        "not take its place or open (the service's log says why); nothing of it was kept",
                        {"Retry-After": "5"})

    async def _drop_other_model(self, name: str) -> int:
        """drop_gallery of a gallery that holds another model's vectors (so it is never opened to serve): opened
        for the model it records, which takes its lock as an open gallery's is held, counted, closed, removed."""
        import index

        s = self.settings

        def drop() -> int:
            if s.milvus_uri:
                store = index.MilvusStore.open(index.MilvusConfig(s.milvus_uri, token=s.milvus_token_value(),
                                                                  db_name=s.milvus_db, gallery=name))
            else:
                store = index.Store.open(index.StoreConfig(path=index.gallery_path(s.data_dir, name), use_gpu=False,
                                                           snapshot_every=0))
            try:
                count = store.count()
            finally:
                store.close()
            self._remove_gallery(name)
            return count

        async with self._gallery_lock:   # as drop_gallery holds it: no request opens or makes the gallery meanwhile
            try:
                count = await anyio.to_thread.run_sync(drop)
            except Exception as exc:  # noqa: BLE001  (the path and the cause go to the log)
                raise await self._not_opened(name, True, exc) from None
        self.metrics.forget_gallery(name)
        log.info("gallery %s deleted (it held another model's vectors): %d items", name, count)
        return count

    async def _forget(self, g: Gallery, why: str) -> None:
        """Close an open gallery and stop serving it (its folder is left as it is); once, when the refresh
        loop and a request both find its folder gone."""
        if self.galleries.get(g.name) is not g:
            return
        del self.galleries[g.name]
        if g.commits is not None:
            await g.commits.stop()
        await anyio.to_thread.run_sync(g.store.close)
        log.info("gallery %s closed: %s", g.name, why)

    async def catch_up(self, g: Gallery, position: str) -> None:
        """Make this request's reads of gallery `g` see a state at least as new as `position` (the
        X-Simsearch-Position a write answered): a read-only replica behind it applies the writer's
        changes now instead of at its next refresh. 400 for a malformed position, 409 for one this
        gallery never had."""
        import index

        try:
            if g.store.reaches(position):
                return
        except index.InvalidItemError as exc:
            raise ApiError(400, "invalid_position", f"X-Simsearch-After: {exc}") from None
        if self.settings.read_only:
            async with self._catch_up_lock:   # the requests that wait on one write share its refresh
                if not g.store.reaches(position):
                    self.metrics.catch_ups.inc()
                    try:
                        await anyio.to_thread.run_sync(self._refresh, g.store)
                    except Exception as exc:  # noqa: BLE001  (the path and the cause go to the log)
                        log.error("index: cannot read the writer's changes for X-Simsearch-After %s: %s", position, exc)
                        raise ApiError(503, "index_unavailable", "this replica cannot read the writer's changes "
                                       "just now, so it cannot answer from a state as new as X-Simsearch-After "
                                       f"{position}; retry, or read without the header", {"Retry-After": "5"}) from None
            if g.store.reaches(position):
                return
        raise ApiError(409, "position_ahead", f"X-Simsearch-After {position} is ahead of this gallery, which is at "
                       f"{g.store.position()}: it was not answered by a write to this gallery (another "
                       "gallery's, or one since replaced?)")

    def search(self, queries: np.ndarray, params: SearchParams) -> list:
        """The hits of each query vector (unit rows) under params, in params.gallery: the store's search,
        then the PDDM re-ranking when asked for, or its groups (store.search_grouped) with params.group_by;
        no item of params.exclude among them. Blocking: run it in a worker thread."""
        g = self.galleries.get(params.gallery)
        if g is None:   # dropped since the request began
            raise ApiError(503, "index_unavailable", f"gallery {params.gallery!r} was closed while this request was "
                           "under way (deleted, replaced by a restore, or the service is stopping); retry",
                           {"Retry-After": "1"})
        store = g.store
        filters = {"label": params.label, "max_distance": params.max_distance,
                   "where": json.loads(params.where) if params.where else None}
        tuning = params.tuning()
        if not tuning:   # the gallery's own index parameters (the store's search as it always was)
            return self._search_in(store, queries, params, filters)
        from index import InvalidItemError

        try:
            return self._search_in(store, queries, params, {**filters, **tuning})
        except InvalidItemError as exc:   # a parameter the gallery's index kind does not take, or beyond its lists
            raise ApiError(422, "invalid_parameter", f"gallery {g.name!r}: {exc}") from None

    def _search_in(self, store, queries: np.ndarray, params: SearchParams, filters: dict) -> list:
        from index import search_hits   # imported when used: the app answers /healthz before FAISS loads

        if not params.rerank:
            return search_hits(store, queries, params.k, params.exclude, params.group_by, params.group_size,
                               params.offset, **filters)
        # the PDDM re-orders the `rerank` nearest that are not left out (the routes refuse it with group_by)
        found = search_hits(store, queries, params.rerank, params.exclude, **filters)
        return [self._rerank(store, q, hits, params.k, params.offset) for q, hits in zip(queries, found)]

    def _rerank(self, store, query: np.ndarray, hits: list, k: int, offset: int = 0) -> list:
        """The best k of `hits` by the PDDM score after the best `offset` (the hits keep their cosine score and
        distance)."""
        items = store.get_many([h.id for h in hits])
        kept = [(h, it) for h, it in zip(hits, items) if it is not None]  # deleted meanwhile
        if not kept:
            return []
        order, _ = self.pddm.rerank(query, np.stack([it.vector for _, it in kept]))
        return [kept[i][0] for i in order[offset:offset + k]]

    def require_ready(self) -> None:
        """Raise 503 not_ready (with the reason) until the model and index are loaded."""
        if not self.ready:
            raise ApiError(503, "not_ready", f"the service is not ready: {self.reason}", {"Retry-After": "5"})

    @property
    def store(self):
        """The default gallery's store (index.Store), or None until it is loaded."""
        g = self.galleries.get(DEFAULT_GALLERY)
        return g.store if g is not None else None

    @property
    def model_id(self) -> str | None:
        """The loaded model's id (name@sha12), or None."""
        return self.embedder.model_id if self.embedder is not None else None
