"""Searching a Store: the k nearest items of queries (filtered, grouped, or around a stored item), from
FAISS with the filter's ids as a selector, an exact fallback from the database where the approximate
index finds too few, and ties at the answer's end settled by FAISS id. Part of Store (see _store.py)."""
from __future__ import annotations

import itertools
import numbers
import time
from typing import Any, Callable, Iterable, NamedTuple

import faiss
import numpy as np

from . import _faiss, _filter
from ._checks import check_list
from ._errors import InvalidItemError, StoreError
from ._groups import (MAX_GROUP_CANDIDATES, _check_group_size, _field_key, metadata_value, read_groups,
                      value_key)
from ._types import (Hit, SearchTuning, exact_scores, parse_metadata, score_error, score_to_distance,
                     vectors_from_blobs)

BROAD_FILTER = 10          # a filter keeping at least 1/BROAD_FILTER of an exact gallery: _search_broad
BROAD_MAX_CANDIDATES = 4096  # ... unless that search would need more candidates a query than this
_EXACT_CHUNK = 65_536      # stored vectors compared at a time by a scan of the database (_exact_scan)
_SCAN_SPARE = 64           # nearest read past those asked by that scan, for items deleted while it ran
_RESCORE_SPARE = 16       # candidates past k+1 (or k/2) an exact FAISS search reads for _rescored_locked: reading on
                          # is then rare
_KINDS_OF = {"nprobe": "IVF indexes (ivf, ivfpq)", "ef_search": "HNSW indexes (hnsw)"}


def check_tuning(spec: str, dim: int, nlist: int | None, nprobe, ef_search, exact) -> SearchTuning | None:
    """A search's own index parameters (Store.search's nprobe, ef_search, exact) for a gallery of index kind `spec`
    whose IVF index has `nlist` lists (None: none yet), as a SearchTuning; None when none is given (the store's own
    apply). InvalidItemError naming the wrong value: not a positive integer (nprobe, ef_search) or a bool (exact);
    exact with either of the others; a parameter the kind does not take (nprobe: IVF, ef_search: HNSW); nprobe
    above nlist (or NLIST_MAX before training); ef_search above EF_SEARCH_MAX. An ef_search below the candidates
    a search reads (k, one more for ties, and more for what search_hits leaves out) is raised to them: HNSW returns
    no more than it keeps. (The service and the command line refuse one below the k asked for.)"""
    if nprobe is None and ef_search is None and exact is False:
        return None
    if not isinstance(exact, bool):
        raise InvalidItemError(f"exact must be True or False, got {exact!r}")
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is None:
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise InvalidItemError(f"{name} must be a positive integer, got {value!r}")
        if exact:
            raise InvalidItemError(f"exact=True compares every vector: {name}={value} has nothing left to set; "
                                   "give one of the two")
        takes = _faiss.knobs(spec, dim)
        if name not in takes:
            other = (f", which takes {' and '.join(sorted(takes))} instead" if takes else
                     ", which compares every vector already (exact)")
            raise InvalidItemError(f"{name}={value} applies to {_KINDS_OF[name]}; this gallery's index is "
                                   f"{spec!r}{other}")
    if nprobe is not None:
        most = nlist or _faiss.NLIST_MAX
        if nprobe > most:
            lists = (f"the {nlist} lists of this gallery's IVF index" if nlist else
                     f"{_faiss.NLIST_MAX}, the most lists an IVF index here has")
            raise InvalidItemError(f"nprobe={nprobe} is more than {lists}: give 1..{most} (exact: the exact "
                                   "answer)")
    if ef_search is not None:
        if ef_search > _faiss.EF_SEARCH_MAX:
            raise InvalidItemError(f"ef_search={ef_search} is more than {_faiss.EF_SEARCH_MAX}: give "
                                   f"1..{_faiss.EF_SEARCH_MAX} (exact: the exact answer)")
    return SearchTuning(None if nprobe is None else int(nprobe), None if ef_search is None else int(ef_search), exact)


class _ExactScan(NamedTuple):
    """The scan of the database a search under the read lock asks for before it can answer the queries FAISS left
    short (_answered runs it without the lock): those queries' `n` nearest among the FAISS ids `live` (sorted) but
    `ex`, from the stored vectors of seq <= `applied`; chosen under the lock that asked."""

    rows: list[int]          # the queries' rows in the search
    queries: np.ndarray      # their vectors
    n: int
    label: str | None
    live: np.ndarray
    applied: int
    ex: int | None


class _Scanned(NamedTuple):
    """One query's _ExactScan, as run: the n nearest (FAISS id, score) pairs of the items chosen, nearest first;
    whether those are every item chosen; and the items chosen that the database no longer held (sorted)."""

    pairs: list[tuple[int, float]]
    complete: bool
    missing: np.ndarray


class StoreSearch:
    """Store's searches. Each runs its *_locked part under the read lock through _answered, which runs the exact
    fallback's scan of the database (the queries FAISS leaves short) between two holds of the lock, and _retrying,
    which runs it again while that fallback meets a write committed but not yet applied. The fields it reads are
    Store's, declared in Store.__init__."""

    SEARCH_RETRY_SECONDS = 10   # how long a search waits for a committed write to be applied

    def search(self, queries: np.ndarray, k: int = 10, label: str | None = None,
               max_distance: float | None = None, where: dict[str, Any] | None = None, *,
               nprobe: int | None = None, ef_search: int | None = None, exact: bool = False) -> list[list[Hit]]:
        """The k nearest items of each query row (inner product on unit vectors), best first.
        label: only items with this label (k of them when k exist). where: only items whose metadata
        matches, e.g. {"source": "phone", "year": {"$gte": 2020}}: each key with this value (a JSON
        scalar, compared with its JSON type: 1 matches 1 and 1.0, not "1" or true) or these operators
        ($eq $ne $in $nin $exists $gt $gte $lt $lte; docs/index.md), "$label" for the label (unlabelled: as
        without a key), $or and $and of such. max_distance: only hits with
        distance = sqrt(2 - 2*score) <= max_distance. Accepts (dim,) or (n, dim).
        nprobe (IVF kinds: lists probed), ef_search (HNSW: candidates kept, at most EF_SEARCH_MAX) and exact (every
        vector compared at full precision) are this search's own index parameters, in place of the store's
        (StoreConfig); a filter widens nprobe and ef_search as it widens the store's (docs/index.md "Search
        parameters"). InvalidItemError for one the gallery's kind does not take, or out of its bounds
        (check_tuning)."""
        self._check_open()
        q = self._check_vector(queries, "query", batch=True)
        k, max_distance = self._check_search(k, max_distance)
        conditions = _filter.check_where(where)
        tuning = self._check_tuning(nprobe, ef_search, exact)
        return self._search(q, k, label, max_distance, exclude=None, where=conditions, tuning=tuning)

    def _check_tuning(self, nprobe, ef_search, exact) -> SearchTuning | None:
        if nprobe is None and ef_search is None and exact is False:   # the store's own parameters: no checks
            return None
        return check_tuning(self.spec, self.dim, _faiss.nlist_of(self._index), nprobe, ef_search, exact)

    def search_grouped(self, queries: np.ndarray, k: int, group_by: str, group_size: int = 1,
                       exclude: Iterable[str] = (), label: str | None = None, max_distance: float | None = None,
                       where: dict[str, Any] | None = None, max_candidates: int = MAX_GROUP_CANDIDATES, *,
                       nprobe: int | None = None, ef_search: int | None = None,
                       exact: bool = False) -> list[list[Hit]]:
        """Each query's k nearest groups of items by `group_by` ("label" or "metadata.KEY"), each with its
        group_size nearest items, as index.search_grouped defines them (one flat list a query, group after
        group), with no id of `exclude`; label, where and max_distance as in search. The same answer as
        index.search_grouped over this store's search, found from the FAISS ids and the in-memory labels:
        a hit is made only of the items returned (bench_groups.py). ValueError for another group_by. nprobe,
        ef_search and exact as in search (ef_search at least k groups)."""
        key = _field_key(group_by)
        self._check_open()
        q = self._check_vector(queries, "query", batch=True)
        k, max_distance = self._check_search(k, max_distance)
        _check_group_size(group_size)
        conditions, left_out = _filter.check_where(where), set(check_list(exclude, "exclude="))
        tuning = self._check_tuning(nprobe, ef_search, exact)
        if self._scans_database(tuning):   # one scan for every page read_groups reads, outside the lock
            return self._scanned(q, max_candidates, label, conditions, None,
                                 lambda nearest: self._grouped_locked(q, k, key, group_size, left_out, label,
                                                                      max_distance, conditions, max_candidates,
                                                                      nearest=nearest))
        return self._answered(lambda scanned: self._grouped_locked(q, k, key, group_size, left_out, label,
                                                                   max_distance, conditions, max_candidates, tuning,
                                                                   scanned=scanned))

    def _grouped_locked(self, q, k, key, group_size, left_out, label, max_distance, conditions, max_candidates,
                        tuning=None, nearest=None, scanned=None):
        rows = self._rows
        ex = {self._fid_of[i] for i in left_out if i in self._fid_of}
        if key is None:
            def key_of(pair):   # a label is a string or None: its own key
                return rows[pair[0]][1]
        else:
            def key_of(pair):
                return value_key(metadata_value(parse_metadata(rows[pair[0]][2]), key))   # a dotted key: a path

        def kept(pairs):
            near = (p for p in pairs if p[0] not in ex) if ex else pairs
            if max_distance is not None:   # the pairs are nearest first
                near = itertools.takewhile(lambda p: score_to_distance(p[1]) <= max_distance, near)
            return near

        asked: list[_ExactScan] = []   # a page's scan to run without the lock: every page is read again after it
        if nearest is None:
            def nearest(pending, n):
                found = self._pairs_locked(q[pending], n, label, None, conditions, tuning, scanned, pending,
                                           max_candidates)
                if isinstance(found, _ExactScan):
                    asked.append(found)
                    return None
                return found
        found = read_groups(nearest, len(q), k, group_size, key_of, kept, len(ex), max_candidates)
        if found is None:
            return asked[0] if asked else None
        return [self._hits(chosen, None) for chosen in found]

    def search_by_id(self, id: str, k: int = 10, label: str | None = None,
                     max_distance: float | None = None, where: dict[str, Any] | None = None, *,
                     nprobe: int | None = None, ef_search: int | None = None, exact: bool = False) -> list[Hit]:
        """Neighbours of a stored item (the item itself excluded). KeyError when it is absent. nprobe,
        ef_search and exact as in search."""
        where = _filter.check_where(where)
        item = self.get(id)
        if item is None:
            raise KeyError(id)
        k, max_distance = self._check_search(k, max_distance)
        tuning = self._check_tuning(nprobe, ef_search, exact)
        return self._search(item.vector[None], k, label, max_distance, exclude=id, where=where, tuning=tuning)[0]

    def _answered(self, locked: Callable[[dict[int, _Scanned]], Any]) -> Any:
        """locked(scanned) under the read lock, again while it returns None (as _retrying). When it returns an
        _ExactScan (queries FAISS left short, to answer exactly from the database), that scan runs without the lock
        (a scan of a large gallery takes seconds, and a write waiting for the lock, writer-preferring, would stop
        every search behind it) into `scanned`, and locked(scanned) answers from it under the lock again
        (_from_scans), or asks for the scans still missing (another page of a grouped search, or a scan that writes
        spoilt meanwhile), until it answers."""
        scanned: dict[int, _Scanned] = {}   # kept across tries: _from_scans checks a scan against the gallery now

        def attempt():
            with self._rw.read():
                result = locked(scanned)
            while isinstance(result, _ExactScan):   # not retried with a pause: a scan that is asked again is run
                self._run_scan(result, scanned)
                with self._rw.read():
                    result = locked(scanned)
            return result
        return self._retrying(attempt, lock=False)

    def _run_scan(self, scan: _ExactScan, scanned: dict[int, _Scanned]) -> None:
        """Run `scan` (no lock held) into `scanned`, by the queries' rows."""
        found, missing = self._exact_scan(scan.queries, scan.n, scan.label, scan.live, scan.applied, scan.ex)
        chosen = len(scan.live) - (scan.ex is not None and bool(_in_sorted(scan.live, np.array([scan.ex]))[0]))
        complete = chosen - len(missing) <= scan.n
        for row, pairs in zip(scan.rows, found):
            scanned[row] = _Scanned(pairs, complete, missing)

    def _retrying(self, locked: Callable[[], Any], lock: bool = True) -> Any:
        """locked() under the read lock (lock=False: it takes the lock itself), again while it returns None (its
        exact fallback met a write committed but not yet applied)."""
        attempt, deadline = 0, time.monotonic() + self.SEARCH_RETRY_SECONDS
        while True:
            if lock:
                with self._rw.read():
                    result = locked()
            else:
                result = locked()
            if result is not None:
                return result
            attempt += 1  # the exact fallback met a write committed but not yet applied: retry
            if time.monotonic() > deadline:  # not a write in flight: the in-memory state is wrong
                raise StoreError(f"the exact search of {self._path} found the database and the in-memory "
                                 f"index disagreeing for {self.SEARCH_RETRY_SECONDS} s (a bug: please report it); "
                                 "reopening the store (restarting the service) rebuilds that state")
            time.sleep(min(0.001 * attempt, 0.05))

    def _search(self, q, k, label, max_distance, exclude, where=None, tuning=None):
        if self._scans_database(tuning):
            return self._scanned(q, k, label, where, exclude,
                                 lambda nearest: [self._hits(pairs[:k], max_distance)
                                                  for pairs in nearest(range(len(q)), k)])
        return self._answered(lambda scanned: self._search_locked(q, k, label, max_distance, exclude, where, tuning,
                                                                  scanned))

    def _scans_database(self, tuning) -> bool:
        """exact=True on an index whose vectors are compressed (IVF-PQ): the stored vectors are read instead."""
        return tuning is not None and tuning.exact and not _faiss.exact_in_index(self._index)

    def _scanned(self, q, need, label, where, exclude, finish):
        """finish(nearest) for exact=True from the database (_scans_database), which holds the read lock only
        to choose what to compare and to make the answer, never for the scan: a scan of a large gallery takes
        seconds, and a write waiting for the lock (writer-preferring) would stop every search behind it.
        nearest(rows, n) gives the n nearest (FAISS id, score) pairs of those query rows (n <= need), nearest
        first, of the items in the gallery now: a FAISS id is a row's seq, and its vector never changes (a
        replaced item gets a new seq), so a score read once stays right while the item is there; an item
        deleted, replaced or no longer matching since the scan (or since it was chosen, so that the scan did not
        find it) is dropped, and read from a scan of _SCAN_SPARE more than need, a scan that lost more than that
        is made again (_retrying), as is one that missed an item the gallery holds still (a write in flight)."""
        def attempt():
            with self._rw.read():
                live = self._filter_fids(label, where)
                applied = self._applied_seq
                ex = self._fid_of.get(exclude) if exclude is not None else None
            n = need + _SCAN_SPARE
            found, missing = self._exact_scan(q, n, label, live, applied, ex)
            chosen = len(live) - (ex is not None and bool(_in_sorted(live, np.array([ex]))[0]))
            complete = chosen - len(missing) <= n
            with self._rw.read():
                now = self._filter_fids(label, where)
                ex_now = self._fid_of.get(exclude) if exclude is not None else None
                if len(missing) and (_in_sorted(now, missing) & (missing != (-1 if ex_now is None else ex_now))).any():
                    return None   # gone from the database, here still: a write committed, not yet applied
                lists = []
                for pairs in found:
                    fids = np.fromiter((f for f, _ in pairs), dtype=np.int64, count=len(pairs))
                    there = _in_sorted(now, fids) & (fids != (-1 if ex_now is None else ex_now))
                    kept = [p for p, ok in zip(pairs, there.tolist()) if ok]
                    if not complete and len(kept) < need:
                        return None   # more of the nearest went than the scan read in spare: scan again
                    lists.append(kept)
                return finish(lambda rows, n: [lists[r][:n] for r in rows])
        return self._retrying(attempt, lock=False)

    def _search_locked(self, q, k, label, max_distance, exclude, where=None, tuning=None, scanned=None):
        found = self._pairs_locked(q, k, label, exclude, where, tuning, scanned)
        if found is None or isinstance(found, _ExactScan):
            return found
        return [self._hits(pairs[:k], max_distance) for pairs in found]

    def _pairs_locked(self, q, k, label, exclude, where, tuning=None, scanned=None, rows=None, scan_n=None):
        """(FAISS id, score) of the k nearest items of each query, nearest first, `exclude` (one id) not
        among them, under the search's own parameters `tuning` (None: the store's). A query FAISS leaves short
        is answered exactly, from its scan of the database in `scanned` (by its row in the search, `rows`:
        q's rows by default) if usable (_from_scans), else this is the _ExactScan to run first (for scan_n
        nearest, k by default); None when a scan met a write in flight (the caller retries)."""
        filtered = label is not None or where is not None
        allowed = self._filter_fids(label, where) if filtered else None
        population = len(allowed) if filtered else len(self._rows)
        if exclude is not None and exclude in self._fid_of:
            ex = self._fid_of[exclude]
            if not filtered or _in_sorted(allowed, np.array([ex]))[0]:
                population -= 1
        else:
            ex = None
        want = min(k, population)
        if want <= 0:
            return [[] for _ in range(len(q))]
        out: list[list | None] = [None] * len(q)
        if self._scans_database(tuning):   # only when a rebuild trained an IVF-PQ index since the caller looked
            short = list(range(len(q)))
        else:
            short = self._faiss_pairs_locked(q, k, want, allowed, population, ex, tuning, out)
        if short:
            # The approximate index found fewer than exist (a selective filter, or removed vectors
            # crowding the candidates): answer these queries exactly.
            live = allowed if filtered else self._filter_fids(None, None)
            return self._from_scans(q, short, range(len(q)) if rows is None else rows, want,
                                    k if scan_n is None else scan_n, label, live, ex, scanned or {}, out)
        return out

    def _faiss_pairs_locked(self, q, k, want, allowed, population, ex, tuning, out) -> list[int]:
        """Fill out[qi] with the k nearest (FAISS id, score) pairs FAISS finds for query qi; the queries it finds
        fewer than `want` for are left None, and returned."""
        total = population + (ex is not None)
        # One past the answer (and the left-out item): a tie across the answer's end shows, so that equal
        # scores (copies of one photo) are settled by FAISS id, the same for every k: pages never repeat
        probe = min(k + 1 + (ex is not None), total)
        storage = _faiss.flat_storage(self._index, tuning is not None and tuning.exact)
        if storage is not None:   # rescored: room for a k-th within score_error of the next (_rescored_locked)
            probe = min(k + 1 + max(k // 2, _RESCORE_SPARE) + (ex is not None), total)
        D, I = self._faiss_locked(q, probe, allowed, population, tuning)
        short = []
        for qi in range(len(q)):
            pairs = [(f, s) for f, s in zip(I[qi].tolist(), D[qi].tolist()) if f >= 0 and f != ex]
            if len(pairs) < want:
                short.append(qi)
                continue
            if storage is not None:   # scores a query's own, whatever it is searched with (exact_scores)
                pairs = self._rescored_locked(q[qi:qi + 1], pairs, k, probe, total, allowed, population, ex, tuning,
                                              storage)
            elif len(pairs) > k and pairs[k][1] == pairs[k - 1][1]:
                pairs = self._ties_locked(q[qi:qi + 1], pairs, pairs[k][1], probe, total, allowed, population, ex,
                                          tuning)
            out[qi] = sorted(pairs, key=lambda p: (-p[1], p[0]))[:k]
        return short

    def _from_scans(self, q, short, rows, want, scan_n, label, live, ex, scanned, out):
        """`out` with the queries at `short` (places in q) answered by their scans in `scanned` (by `rows`, their
        rows in the search), of the items among `live` (sorted) but `ex` now: an item deleted, replaced or no longer
        kept by the filter since its scan was chosen is left out; one added since may be missing. The _ExactScan
        of those without a usable scan (none yet, or one that lost more of its nearest than it read in spare);
        None while an item its scan found gone from the database is here still (a write committed, not yet
        applied: the caller retries, as the lock-held answer would)."""
        unscanned = []
        not_ex = -1 if ex is None else ex
        for qi in short:
            scan = scanned.get(rows[qi])
            if scan is None:
                unscanned.append(qi)
                continue
            if len(scan.missing) and (_in_sorted(live, scan.missing) & (scan.missing != not_ex)).any():
                return None
            fids = np.fromiter((f for f, _ in scan.pairs), dtype=np.int64, count=len(scan.pairs))
            there = _in_sorted(live, fids) & (fids != not_ex)
            kept = [p for p, ok in zip(scan.pairs, there.tolist()) if ok]
            if len(kept) < want and not scan.complete:
                unscanned.append(qi)   # more of the nearest went than the scan read in spare: scan again
                continue
            out[qi] = kept[:want]
        if unscanned:
            return _ExactScan([rows[qi] for qi in unscanned], q[unscanned], min(scan_n, len(live)) + _SCAN_SPARE,
                              label, live, self._applied_seq, ex)
        return out

    def _rescored_locked(self, q1, pairs, k, n, total, allowed, population, ex, tuning, storage):
        """One query's pairs from a flat storage (_faiss.flat_storage), each scored by exact_scores, read on (twice
        as many each time) until no item unread can score as much as the k-th: FAISS's score of an item is within
        score_error of that, so every item at least as near as the k-th, ties included, is among them."""
        margin = score_error(self.dim)
        while True:
            fids = np.fromiter((f for f, _ in pairs), dtype=np.int64, count=len(pairs))
            scores = exact_scores(q1, _faiss.vectors_by_id(self._index, storage, fids))
            kth = -np.partition(-scores, min(k, len(scores)) - 1)[min(k, len(scores)) - 1]
            if n >= total or len(pairs) < n - (ex is not None) or pairs[-1][1] + margin < kth:
                return list(zip(fids.tolist(), scores.tolist()))
            n = min(2 * n, total)
            D, I = self._faiss_locked(q1, n, allowed, population, tuning)
            pairs = [(f, s) for f, s in zip(I[0].tolist(), D[0].tolist()) if f >= 0 and f != ex]

    def _ties_locked(self, q1, pairs, tied, n, total, allowed, population, ex, tuning=None):
        """One query's pairs read on (twice as many each time) until every item scoring `tied` is among them."""
        while pairs[-1][1] >= tied and n < total:
            n = min(2 * n, total)
            D, I = self._faiss_locked(q1, n, allowed, population, tuning)
            pairs = [(f, s) for f, s in zip(I[0].tolist(), D[0].tolist()) if f >= 0 and f != ex]
            if len(pairs) < n - (ex is not None):   # the approximate index has no more to give
                break
        return pairs

    def _faiss_locked(self, q, kk, allowed, population, tuning=None):
        """(scores, FAISS ids) of the kk nearest items of each query among `allowed` (every item when None),
        removed items never among them, under the search's own parameters `tuning` (None: the store's); -1
        pads a row short of kk."""
        index = self._index
        sel = keep = hidden = None
        if allowed is not None:
            keep = [allowed]
            sel = faiss.IDSelectorBatch(allowed)
        if self._dead and _faiss.is_exact(index):
            # a flat index's removed vectors (_remove_fids) are read past: a selector would take FAISS's exact search
            # off its BLAS path (a batch of queries 2-3x slower), and the unfiltered search off the GPU
            hidden = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            kk, asked = kk + len(hidden), kk
        elif self._dead:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            not_dead = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
            keep = (keep or []) + [dead, not_dead]
            sel = not_dead if sel is None else faiss.IDSelectorAnd(sel, not_dead)
        cfg = self.config
        widen = len(self._rows) / max(population, 1) if allowed is not None else 1.0
        if tuning is not None and not _faiss.is_exact(index):   # (a flat index takes exact=True as it is)
            D, I = self._tuned_locked(index, q, kk, sel, widen, tuning)
            del keep, sel
            return _faiss.to_scores(index, D), I
        params, _sub = _faiss.search_params(index, sel, kk, cfg.nprobe, cfg.ef_search, cfg.k_factor, widen)
        gpu = self._gpu.get(index, self._version) if (self._gpu and sel is None and kk <= _faiss.GPU_MAX_K) else None
        blas_from = _faiss.blas_min_queries(index)
        if (allowed is not None and gpu is None and (not self._dead or hidden is not None) and blas_from is not None
                and len(q) >= blas_from and population * BROAD_FILTER >= len(self._rows)
                and _broad_candidates(kk, population, len(self._rows)) <= BROAD_MAX_CANDIDATES):
            # FAISS's exact search with a selector goes vector by vector, never through BLAS: for a
            # batch and a filter that keeps much of the gallery, searching everything through BLAS
            # for more candidates and keeping the allowed ones is 2-3x cheaper (bench_filter.py).
            # A query left short by it takes the selector path after all.
            D, I = self._search_broad(q, kk, allowed, population, params)
        elif gpu is not None:
            D, I = gpu.search(q, kk)
        elif params is None:
            _faiss.tune_exact_search(index)
            D, I = index.search(q, kk)
        else:
            D, I = _faiss.search_with(index, q, kk, params)
        del keep, sel
        if hidden is not None:
            D, I = _without(D, I, hidden, asked)
        return _faiss.to_scores(index, D), I

    def _tuned_locked(self, index, q, kk, sel, widen, tuning: SearchTuning) -> tuple[np.ndarray, np.ndarray]:
        """(FAISS's values, FAISS ids) of the kk nearest of each query under the search's own parameters, on the
        CPU (the GPU copy takes no parameters): nprobe and ef_search in place of the store's, widened as theirs
        are; exact on an index that holds every vector in full (_faiss.exact_in_index): an IVF-Flat index probes
        every list, an HNSW-Flat index's flat storage is searched instead of its graph."""
        if tuning.exact:
            storage = _faiss.hnsw_storage(index)
            if storage is not None:
                return _faiss.search_storage(index, storage, q, kk, sel)
            params, _sub = _faiss.exact_params(index, sel, kk)
        else:
            cfg = self.config
            params, _sub = _faiss.search_params(index, sel, kk, tuning.nprobe or cfg.nprobe,
                                                tuning.ef_search or cfg.ef_search, cfg.k_factor, widen)
        return _faiss.search_with(index, q, kk, params)

    def _exact_scan(self, q, n, label, live, applied, ex):
        """(each query's n nearest (FAISS id, score) pairs by (score, FAISS id) among the FAISS ids `live` (sorted),
        `ex` left out, from the stored vectors of seq <= `applied` (the database), every one compared at full
        precision; the FAISS ids of `live` but `ex` that the database no longer holds, sorted: deleted or replaced
        since they were chosen). _EXACT_CHUNK vectors at a time, with no lock held: one SELECT is one read
        transaction, a consistent snapshot (WAL)."""
        sql, args = "SELECT seq, vector FROM items WHERE seq <= ?", [applied]
        if label is not None:
            sql, args = sql + " AND label = ?", args + [label]
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(len(q))]
        margin = score_error(self.dim)
        seen: list[np.ndarray] = []
        with self._reading() as conn:   # close() waits for the scan to end before it closes the connection
            cursor = conn.execute(sql + " ORDER BY seq", args)
            try:
                while rows := cursor.fetchmany(_EXACT_CHUNK):
                    fids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                    kept = _in_sorted(live, fids) & (fids != (-1 if ex is None else ex))
                    if not kept.any():
                        continue
                    fids = fids[kept]
                    seen.append(fids)
                    vectors = vectors_from_blobs([r[1] for r, ok in zip(rows, kept) if ok], self.dim)
                    scores = q @ vectors.T   # a matmul picks the candidates, exact_scores scores them
                    best = [_best_exact(qv, row, vectors, fids, near, n, margin)
                            for qv, row, near in zip(q, scores, best)]
            finally:
                cursor.close()
        found = [list(zip(f.tolist(), s.tolist())) for s, f in best]
        if sum(map(len, seen)) == len(live) - (ex is not None and bool(_in_sorted(live, np.array([ex]))[0])):
            return found, np.zeros(0, np.int64)
        missing = np.setdiff1d(live, np.concatenate(seen) if seen else np.zeros(0, np.int64), assume_unique=True)
        return found, (missing if ex is None else missing[missing != ex])

    def _search_broad(self, q, kk, allowed, population, params):
        """(D, I) of the kk best allowed items per query, from an unfiltered exact search for more
        candidates; queries it leaves short are searched again with the selector (`params`)."""
        index = self._index
        over = _broad_candidates(kk, population, len(self._rows))
        _faiss.tune_exact_search(index)
        D, I = index.search(q, over)
        ok = _in_sorted(allowed, I)  # I's -1 pads never match
        D_out = np.full((len(q), kk), -np.inf, dtype=D.dtype)
        I_out = np.full((len(q), kk), -1, dtype=np.int64)
        short = []
        for row in range(len(q)):
            hits = np.flatnonzero(ok[row])[:kk]
            if len(hits) < kk:
                short.append(row)
            D_out[row, :len(hits)], I_out[row, :len(hits)] = D[row, hits], I[row, hits]
        if short:
            D_out[short], I_out[short] = _faiss.search_with(index, q[short], kk, params)
        return D_out, I_out

    def _hits(self, pairs, max_distance) -> list[Hit]:
        hits = []
        for fid, score in pairs:
            dist = score_to_distance(score)
            if max_distance is not None and dist > max_distance:
                break  # sorted by score, so the rest are farther
            id_, label, meta = self._rows[fid]
            hits.append(Hit(id_, score, dist, label, parse_metadata(meta)))
        return hits


def _best(scores: np.ndarray, fids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best of (scores, fids) by score, ties by FAISS id (as every answer), best first."""
    if len(scores) > n:   # what cannot be among the n best goes first: a partition, not a sort of them all
        keep = scores >= np.partition(scores, len(scores) - n)[len(scores) - n]
        scores, fids = scores[keep], fids[keep]
    order = np.lexsort((fids, -scores))[:n]
    return scores[order], fids[order]


def _best_exact(query: np.ndarray, approx: np.ndarray, vectors: np.ndarray, fids: np.ndarray,
                best: tuple[np.ndarray, np.ndarray], n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """_best of the n best so far (`best`, by exact_scores) and a chunk of `vectors` (FAISS ids `fids`) whose scores
    `approx` are a matmul's, each within `margin` (score_error) of its exact score: those that could be among the n
    best, approx at least the chunk's n-th or the n-th so far less twice that, are scored exactly."""
    floor = -np.inf
    if len(approx) > n:
        floor = np.partition(approx, len(approx) - n)[len(approx) - n] - 2 * margin
    if len(best[0]) >= n:
        floor = max(floor, float(best[0][n - 1]) - margin)
    near = np.flatnonzero(approx >= floor)
    return _best(np.concatenate([best[0], exact_scores(query, vectors[near])]),
                 np.concatenate([best[1], fids[near]]), n)


def _without(D: np.ndarray, I: np.ndarray, hidden: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's (D, I) without the ids `hidden`, each row's kk first left, in their order; -1 (and D's lowest) pads a
    row with fewer, as FAISS pads."""
    gone = np.isin(I, hidden)
    if gone.any():
        order = np.argsort(gone, axis=1, kind="stable")   # the kept first, in FAISS's order
        D, I, gone = (np.take_along_axis(a, order, axis=1) for a in (D, I, gone))
        D, I = np.where(gone, np.finfo(D.dtype).min, D), np.where(gone, -1, I)
    return D[:, :kk], I[:, :kk]


def _broad_candidates(k: int, population: int, total: int) -> int:
    """Candidates an unfiltered search needs to hold k of `population` allowed items among `total`,
    with room to spare (twice the expected number, plus 16)."""
    return min(total, int(k * total / max(population, 1) * 2) + 16)

def _in_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of `ids` are in the sorted array `sorted_ids` (the filter's ids, see _filter_fids)."""
    if len(sorted_ids) == 0:
        return np.zeros(np.shape(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids
