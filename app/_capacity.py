"""What the service holds of the machine, and how it says so when it runs short: the pixels the decodes of POST /index
hold at once (PixelBudget), the open-file limit (raised at start; OutOfFiles: the 503 and its log when the process
has none left), and the items of the galleries not open, read again only when their files change (UnopenedCounts)."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, Callable

import anyio

from ._errors import ApiError
from ._refusals import RefusalRun

if TYPE_CHECKING:
    from ._metrics import Metrics

log = logging.getLogger("simsearch.app")


class PixelBudget:
    """The pixels the decodes of POST /index may hold at once in all (SIMSEARCH_DECODE_PIXELS_IN_FLIGHT): each
    decode takes what its decoding holds at once, counted as the request's pixel budget counts it
    (app/_embedding.py, _check_whole_decode_budget), and waits while that is not left. Counting decodes instead let
    a 16-core host hold 16 whole 64-MP decodes at once (a WebP's about 1 GB). Small images take little of it, so
    they decode as many at once as before (as many as there are cores: Service.decode_limiter); a decode larger
    than the whole budget waits until nothing else is decoded, and then runs alone. First come, first served: a
    decode waiting for room holds back those after it, so that a stream of small ones never starves a large one.
    On the event loop (no lock): `hold` is entered by the routes, never by a worker thread."""

    def __init__(self, capacity: int, metrics: Metrics | None = None):
        self.capacity = capacity
        self._metrics = metrics   # simsearch_decode_pixels_in_flight and simsearch_decode_budget_waits, when given
        self.in_flight = 0    # pixels held by the decodes under way
        self.holding = 0      # decodes under way
        self.waits = 0        # decodes that had to wait for room, since start
        self._waiting: deque[list] = deque()   # [pixels, anyio.Event] of each decode waiting, in order

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` of the budget (at most all of it) for the block inside; wait first while they are not
        left, or while an earlier decode waits."""
        take = min(max(int(pixels), 0), self.capacity)
        if self._waiting or self.in_flight + take > self.capacity:
            self.waits += 1
            if self._metrics is not None:
                self._metrics.decode_waits.inc()
            entry = [take, anyio.Event()]
            self._waiting.append(entry)
            try:
                await entry[1].wait()
            except BaseException:   # cancelled (the client went away): give back what was granted meanwhile
                if entry[1].is_set():
                    self._release(take)
                else:
                    self._waiting.remove(entry)
                    self._wake()   # the head of the queue may fit now
                raise
        else:
            self._take(take)
        try:
            yield
        finally:
            self._release(take)

    def _take(self, take: int) -> None:
        self.in_flight += take
        self.holding += 1
        if self._metrics is not None:
            self._metrics.decode_pixels.set(self.in_flight)

    def _release(self, take: int) -> None:
        self.in_flight -= take
        self.holding -= 1
        if self._metrics is not None:
            self._metrics.decode_pixels.set(self.in_flight)
        self._wake()

    def _wake(self) -> None:
        """Let in the waiting decodes, in order, that fit now."""
        while self._waiting and self.in_flight + self._waiting[0][0] <= self.capacity:
            take, event = self._waiting.popleft()
            self._take(take)
            event.set()




OPEN_FILES_CAP = 1 << 20   # the most the soft open-file limit is raised to (where the hard limit is higher or none)
FILES_PER_GALLERY = 4      # files an open gallery holds: its database, write-ahead log, shared memory and lock


def raise_open_file_limit() -> tuple[int, int, int] | None:
    """Raise this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit, at most OPEN_FILES_CAP:
    each open gallery holds about FILES_PER_GALLERY files, and the common soft limit of 1024 ran out at a few
    hundred galleries while the hard one (524288 and more, in containers too) allowed far more. Returns (soft
    before, soft now, hard), -1 for unlimited; None where there are no such limits (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    want = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:   # macOS: at most OPEN_MAX without an infinite hard limit
            log.warning("cannot raise the open-file limit (RLIMIT_NOFILE) from %d to %d: %s", soft, want, exc)
    return before, soft, hard


def open_file_limits() -> tuple[int, int] | None:
    """RLIMIT_NOFILE's (soft, hard) now (-1: unlimited), None where there are none (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _files_open() -> int | None:
    """How many files this process has open (None where that cannot be told: no /proc)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _cannot_open(exc: BaseException) -> bool:
    """SQLite's SQLITE_CANTOPEN ("unable to open database file"), which does not say why: as SQLite raised it, or
    in the message of the store's error that took its place."""
    import sqlite3

    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return (code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN) or "unable to open database file" in str(exc)


def out_of_files(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is this process (or the system) out of open files: EMFILE
    or ENFILE, in an OSError or in the message of an error that took its place; or SQLite unable to open a file
    while this process holds (nearly) as many as its limit allows (SQLite does not say why it could not)."""
    todo, seen, cannot = [exc], set(), False
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "Too many open files" in str(e):   # an OSError's message, in the error of the index that took its place
            return True
        cannot = cannot or _cannot_open(e)
        todo += [e.__cause__, e.__context__]
    limits = open_file_limits()
    if not cannot or limits is None or limits[0] < 0:
        return False
    used = _files_open()
    if used is None:   # no /proc: try to open one
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as probe:
            return probe.errno in (errno.EMFILE, errno.ENFILE)
        return False
    return used >= limits[0] - max(8, limits[0] // 32)


class OutOfFiles(RefusalRun):
    """The answer when the service has run out of open files (a 503 naming the limit and what the operator can
    do), and its log: the first refusal of a run at ERROR, with its error; then at most one line a minute counting
    those since, and a line when a gallery opens again. No retry helps until files are freed (galleries deleted,
    the limit raised and the service restarted), so it is said once, not at every request (as WriteRefusals)."""

    def answer(self, exc: BaseException, what: str) -> ApiError | None:
        """The 503 out_of_files when `exc` is the process out of open files (`what` failed: "gallery 'x' was not
        opened"), logged as the class says; None for any other failure."""
        if not out_of_files(exc):
            return None
        limits = open_file_limits() or (-1, -1)
        soft, hard = ("unlimited" if v < 0 else str(v) for v in limits)
        said = self._count()
        if said is True:
            used = _files_open()
            log.error("out of open files (%s open; RLIMIT_NOFILE soft %s, hard %s): %s: %s. Each open gallery holds "
                      "about %d: raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) or lower "
                      "SIMSEARCH_MAX_GALLERIES; deleting galleries frees theirs. One line a minute while this lasts",
                      "?" if used is None else used, soft, hard, what, exc, FILES_PER_GALLERY)
        elif said is not False:
            count, since = said
            log.error("%d more requests refused in the last %.0f s for lack of open files (RLIMIT_NOFILE soft %s, hard "
                      "%s)", count, since, soft, hard)
        return ApiError(503, "out_of_files", f"{what}: the service has run out of open files (its limit, "
                        f"RLIMIT_NOFILE, is {soft}; hard limit {hard}; each open gallery holds about "
                        f"{FILES_PER_GALLERY}). No retry succeeds until files are freed: the operator can raise the "
                        "limit or lower SIMSEARCH_MAX_GALLERIES (and restart the service), or delete galleries",
                        {"Retry-After": "30"})

    def recovered(self) -> None:
        """A gallery opened: after refusals, say that there are files again (and how many were refused)."""
        ended = self._end()
        if ended is not None:
            log.warning("galleries open again: %d requests were refused for lack of open files over %.0f s",
                        ended[0], ended[2])


STABLE_SECONDS = 2.0   # how long a gallery's files must be unchanged before a count read from them is kept


class UnopenedCounts:
    """The items of each gallery this process has not opened, as last read (a StoreReader opened, counted,
    closed), kept with the state of the files it was read from: the database file's and its write-ahead log's
    (device, inode, size, mtime). A count is read again only when they changed (another process wrote the gallery,
    or deleted it and made it anew): GET /galleries, which the search page asks for at every load, opened every
    gallery not open at every call (430-780 ms for 1000 galleries after a restart). A write-ahead log that is not
    there and an empty one are the same state (a reader's first look makes it, empty). A count is kept only once
    those files have been unchanged for STABLE_SECONDS before they were looked at: a write within the same tick of
    the file system's clock as the one before could leave the size and mtime as they were. `reads` and `kept`
    count the counts read and answered from what was kept."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[tuple, int]] = {}   # by database file: (its files' state, items)
        self.reads = 0
        self.kept = 0

    @staticmethod
    def _state(db: str) -> tuple | None:
        """The state of database file `db` and of its write-ahead log (None for an empty one or none), and the
        newest of their mtimes in seconds; None when there is no database file."""
        try:
            st = os.stat(db)
        except OSError:
            return None
        try:
            wal = os.stat(db + "-wal")
        except OSError:
            wal = None
        wal_state = (wal.st_ino, wal.st_size, wal.st_mtime_ns) if wal is not None and wal.st_size else None
        newest = max(st.st_mtime_ns, wal_state[2] if wal_state else 0) / 1e9
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, wal_state), newest

    def count(self, db: str, read: Callable[[], int]) -> int:
        """The items of the store whose database file is `db`: as kept, while its files have not changed, else
        `read()` (kept when its files were stable). Blocking."""
        looked = time.time()
        found = self._state(db)   # before the read: a write after it changes the state, so it is read again
        if found is not None:
            with self._lock:
                kept = self._counts.get(db)
            if kept is not None and kept[0] == found[0]:
                self.kept += 1
                return kept[1]
        count = read()
        self.reads += 1
        with self._lock:
            if found is not None and looked - found[1] >= STABLE_SECONDS:
                self._counts[db] = (found[0], count)
            else:
                self._counts.pop(db, None)
        return count

    def keep_only(self, dbs: set[str]) -> None:
        """Forget the counts of every database file but `dbs` (the galleries there are now)."""
        with self._lock:
            for db in set(self._counts) - dbs:
                del self._counts[db]
