"""The FAISS store's indexes behind `where` filters: per metadata key, its values -> the FAISS ids of the items
holding them, and the filter results of recent searches. Store holds one; it takes no lock of its own: the
store calls it under the locks it already holds (the read lock to search, the write lock to change it)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _filter
from ._types import parse_metadata


class MetaIndexes:
    """The metadata indexes and the filter cache over a store's in-memory rows.

    rows (FAISS id -> (id, label, metadata json)) and by_label (label -> FAISS ids) are the store's own maps,
    read here and changed only by the store, which tells this object of each change (add, discard)."""

    def __init__(self, rows: dict[int, tuple[str, str | None, str]], by_label: dict[str | None, set[int]]) -> None:
        self._rows = rows
        self._by_label = by_label
        # metadata key -> (its value, as _filter.value_keys: a list's under each scalar element too) -> FAISS
        # ids (one id as a bare int, see _filter.add): built for a key the first time a search filters on it,
        # then kept up to date by every write. _meta_keys counts the items that have each key (None until
        # the first metadata filter), so that a filter on a key no item has costs nothing: readers cannot
        # make the store scan for keys that writers never stored.
        self.by_key: dict[str, dict[Any, int | set[int]]] = {}
        # A key with dots (a path into nested objects, _filter.lookup) is indexed the same way, built and kept
        # alike; _paths names those of by_key, which a write reads by lookup instead of as top-level keys.
        # _path_counts counts the items that have each nested path (_filter.nested_paths), so that a path no
        # item has costs nothing either: None until the first index of a path, whose pass counts them, then
        # kept current by every write. Until then (a gallery never filtered on a path) paths cost nothing:
        # the top-level keys are indexed and counted as they were before paths.
        self._paths: set[str] = set()
        self._meta_keys: dict[str, int] | None = None
        self._path_counts: dict[str, int] | None = None
        self._filter_cache: dict[Any, tuple[int, np.ndarray]] = {}  # (label, where) -> (version, fids)
        self._labels = _LabelIndex(by_label)   # where's "$label": the label index, read as a key's

    def filter_fids(self, label: str | None, where: tuple | None, version: int) -> np.ndarray:
        """FAISS ids of the items with this label (any label when None) whose metadata matches
        `where` (see _filter), from the label and metadata indexes; cached until the next write
        (`version`: the store's count of applied writes)."""
        key = (label, where)
        cached = self._filter_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        within = [self._by_label.get(label, set())] if label is not None else []
        fids = _filter.matching(where or (), self._filter_index, within, self._rows.keys)
        arr = np.sort(np.fromiter(fids, dtype=np.int64, count=len(fids)))  # sorted: _search_broad, list
        if len(self._filter_cache) > 64:
            self._filter_cache.clear()
        self._filter_cache[key] = (version, arr)
        return arr

    def _filter_index(self, key: str) -> dict[Any, int | set[int]]:
        """What a filter's condition on `key` reads: the index of that metadata key, or for where's "$label"
        (_filter.LABEL) the items' labels (the unlabelled not in it). Only filters: a facet or a group of
        metadata.$label reads a metadata key of that name, as MilvusStore does."""
        if key == _filter.LABEL:
            return self._labels   # type: ignore[return-value]   # read as a dict is, never changed
        return self.index(key)

    def index(self, key: str) -> dict[Any, int | set[int]]:
        """The index of one metadata key, built the first time (see build). Empty, and
        not kept, for a key no item has."""
        built = self.by_key.get(key)
        if built is not None:
            return built
        counted = self._meta_keys is not None and (self._path_counts is not None or _filter.PATH_SEPARATOR not in key)
        if counted and not self._has(key):
            return {}
        return self.build([key], keep=False)[key]

    def _has(self, key: str) -> bool:
        """Whether an item has this key, or this nested path (an older item may hold "a.b" as a top-level key)."""
        return key in self._meta_keys or (self._path_counts is not None and key in self._path_counts)

    def build(self, keys: list[str], keep: bool) -> dict[str, dict[Any, int | set[int]]]:
        """Build the indexes of these keys in one pass over every item's metadata (under the read lock:
        no write runs meanwhile; two searches may both build one, alike), counting every key's items
        the first time. A key no item has is kept (current from then on) only when `keep`."""
        built: dict[str, dict[Any, int | set[int]]] = {k: {} for k in keys}
        top = [(k, v) for k, v in built.items() if _filter.PATH_SEPARATOR not in k]
        paths = [(k, v) for k, v in built.items() if _filter.PATH_SEPARATOR in k]
        counts: dict[str, int] | None = {} if self._meta_keys is None else None
        path_counts: dict[str, int] | None = {} if paths and self._path_counts is None else None
        for fid, (_id, _label, meta_json) in self._rows.items():
            meta = parse_metadata(meta_json)
            if counts is not None:
                for k in meta:
                    counts[k] = counts.get(k, 0) + 1
            for k, values in top:
                if k in meta:
                    value = meta[k]
                    if type(value) is list:   # the rest one key each, without value_keys' list: builds stay fast
                        for vk in _filter.value_keys(value):
                            _filter.add(values, vk, fid)
                    else:
                        _filter.add(values, _filter.value_key(value), fid)
            if paths:
                _add_paths(paths, meta, fid)
                if path_counts is not None and meta_json.find("{", 1) != -1:   # maybe an object inside
                    _count_paths(path_counts, meta, +1)
        if counts is not None:
            self._meta_keys = counts
        if path_counts is not None:
            self._path_counts = path_counts
        for k, values in built.items():
            if keep or self._has(k):
                self.by_key[k] = values
                if _filter.PATH_SEPARATOR in k:
                    self._paths.add(k)
        return built

    def add(self, fid: int, meta_json: str) -> None:
        """Count in the metadata of the row `fid`, now in the store (the write lock held)."""
        for key, value in self._changed(meta_json, +1):
            _filter.add(self.by_key[key], value, fid)

    def discard(self, fid: int, meta_json: str) -> None:
        """Count out the metadata the row `fid` had, gone from the store or edited (the write lock held)."""
        for key, value in self._changed(meta_json, -1):
            _filter.discard(self.by_key[key], value, fid)

    def _changed(self, meta_json: str, delta: int) -> list[tuple[str, Any]]:
        """Count this metadata's keys in (+1) or out (-1); (key, value key) for each indexed key's value
        keys (a list's LIST and each element's)."""
        if self._meta_keys is None:
            return []
        meta = parse_metadata(meta_json)
        for k in meta:
            n = self._meta_keys.get(k, 0) + delta
            if n > 0:
                self._meta_keys[k] = n
            else:
                self._meta_keys.pop(k, None)
        if self._path_counts is not None and meta_json.find("{", 1) != -1:   # maybe an object inside: its paths
            _count_paths(self._path_counts, meta, delta)
        if not self._paths:
            return [(k, vk) for k in meta if k in self.by_key for vk in _filter.value_keys(meta[k])]
        changed = [(k, vk) for k in meta if k in self.by_key and k not in self._paths
                   for vk in _filter.value_keys(meta[k])]
        for k in self._paths:   # read by lookup: a literal top-level "a.b" of an older item, else the path
            value = _filter.lookup(meta, k)
            if value is not _filter.MISSING:
                changed += [(k, vk) for vk in _filter.value_keys(value)]
        return changed


def _add_paths(paths: list[tuple[str, dict[Any, Any]]], meta: dict[str, Any], fid: int) -> None:
    """Index the values an item holds at these paths (each read by _filter.lookup)."""
    for path, values in paths:
        value = _filter.lookup(meta, path)
        if value is not _filter.MISSING:
            for vk in _filter.value_keys(value):
                _filter.add(values, vk, fid)


def _count_paths(counts: dict[str, int], meta: dict[str, Any], delta: int) -> None:
    """Count one item's nested paths (_filter.nested_paths) in (+1) or out (-1)."""
    for k, _value in _filter.nested_paths(meta):
        n = counts.get(k, 0) + delta
        if n > 0:
            counts[k] = n
        else:
            counts.pop(k, None)


class _LabelIndex:
    """The store's label -> FAISS ids map as the index of a metadata key whose value is the label: what
    _filter.matching reads of an index (get, values, items, in), the unlabelled items (the label None) left out,
    as an item without a key is. A view, not a copy: a filter on labels costs no pass over them all."""

    def __init__(self, by_label: dict[str | None, set[int]]) -> None:
        self._by_label = by_label

    def get(self, vk: Any, default: Any = None) -> Any:
        # only a string is a label's value key (a list element's key, true, false and null are tuples)
        return self._by_label.get(vk, default) if isinstance(vk, str) else default

    def __contains__(self, vk: Any) -> bool:
        return isinstance(vk, str) and vk in self._by_label

    def items(self):
        return ((label, fids) for label, fids in self._by_label.items() if label is not None)

    def values(self):
        return (fids for label, fids in self._by_label.items() if label is not None)
