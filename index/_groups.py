"""The k nearest items with some left out, or the k nearest groups of items: over any search function.

Grouped search: the best k groups of gallery items (by label or by a metadata key), each with its best
few items, instead of the k best items.

A gallery often holds several photos of one thing: a product shot from four sides, one person's
album, bursts from a phone. The k nearest items are then the same thing k times. Grouping answers
"which k things are nearest", as Qdrant's search groups and Milvus's grouping search do. Over any
store: the nearest items are read in growing pages until k groups are full, the gallery (after the
filters) runs out, or MAX_GROUP_CANDIDATES items have been read.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import numpy as np

from ._checks import check_list
from ._errors import InvalidItemError
from ._filter import MISSING, lookup

MAX_GROUP_CANDIDATES = 16_384   # nearest items read for one grouped query (Milvus's own cap on a search's limit)
# How much one search may ask for, the same through the service and the command line (each says a breach in
# its own spelling: k=10 there, -k 10 here)
MAX_K = 1000                  # neighbours (or groups) in one answer
MAX_GROUP_SIZE = 100          # items a group returns
MAX_GROUPED_RESULTS = 1000    # k groups x group_size items in one answer
MAX_SEARCH_WINDOW = 10_000    # offset + k items (with group_by: x group_size) a search reads to answer
_METADATA = "metadata."


def check_group_by(group_by: str, name: str = "group_by") -> str:
    """`label`, or `metadata.KEY` (a key of the items' metadata; with dots, a path into nested objects:
    `metadata.cam.make`, see metadata_value); ValueError naming it (as the parameter `name`: group_by, or a
    facet's field) otherwise."""
    if group_by == "label" or (group_by.startswith(_METADATA) and len(group_by) > len(_METADATA)):
        return group_by
    raise ValueError(f"{name}={group_by!r}: give `label`, or `metadata.KEY` for a key of the items' metadata "
                     "(e.g. metadata.product, or metadata.cam.make for a key inside an object)")


def _check_group_size(group_size) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise InvalidItemError(f"group_size must be a positive integer, got {group_size!r}")


def _field_key(field: str, name: str = "group_by") -> str | None:
    """None for `label`, else the key of `metadata.KEY`; ValueError (check_group_by's, naming the argument
    `name`) for another field."""
    check_group_by(field, name)
    return None if field == "label" else field[len(_METADATA):]


def metadata_value(metadata: dict[str, Any], key: str) -> Any:
    """The value a group or a facet of `metadata.KEY` reads for `key` in an item's metadata, as a `where`
    filter reads it (index.check_where): the top-level key, or with dots the path through nested objects
    (never into a list); None when there is none."""
    value = lookup(metadata, key)
    return None if value is MISSING else value


def group_value(hit, group_by: str) -> Any:
    """The value `hit` is grouped under (its label, or its metadata's value at the key or path), None when it
    has none."""
    if group_by == "label":
        return hit.label
    return metadata_value(hit.metadata, group_by[len(_METADATA):]) if isinstance(hit.metadata, dict) else None


def _key(value: Any) -> tuple:
    # JSON's equality, as the `where` filters compare: 2024 and 2024.0 alike (Python's too: equal, one hash),
    # "2024" and true apart; a list or an object by its content, through JSON (sorted keys)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):   # before int: True is an int to Python, not to JSON
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    return ("j", json.dumps(_same_numbers(value), sort_keys=True, separators=(",", ":")))


def _same_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_same_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _same_numbers(v) for k, v in value.items()}
    return value


def group_hits(hits: list, group_by: str) -> list[tuple[Any, list]]:
    """(value, hits) of each group of `hits` in the order the groups first appear; hits without a value skipped."""
    groups: dict[tuple, tuple[Any, list]] = {}
    for h in hits:
        value = group_value(h, group_by)
        if value is not None:
            groups.setdefault(_key(value), (value, []))[1].append(h)
    return list(groups.values())


def value_key(value: Any) -> tuple | None:
    """What groups compare a group value by (JSON's equality, as the filters); None for no value."""
    return None if value is None else _key(value)


def first_groups(candidates: Iterable, k: int, group_size: int, key_of: Callable[[Any], Any]) -> tuple[list, bool]:
    """(chosen, full): of `candidates` in their order (nearest first), the first group_size of each of the
    first k groups to appear, group after group; full when k groups of group_size were found. key_of gives
    a candidate's group as a hashable key (value_key of its value), None for none (skipped). Stops reading
    as soon as the answer is full."""
    groups: dict[Any, list] = {}
    full = 0
    for c in candidates:
        key = key_of(c)
        if key is None:
            continue
        members = groups.get(key)
        if members is None:
            if len(groups) == k:   # the groups rank by their nearest item: a group first seen now is not among them
                continue
            members = groups[key] = []
        if len(members) < group_size:
            members.append(c)
            if len(members) == group_size:
                full += 1
                if full == k:
                    break
    return [c for members in groups.values() for c in members], full == k


def read_groups(nearest: Callable[[list[int], int], list[list] | None], queries: int, k: int, group_size: int,
                key_of: Callable[[Any], Any], kept: Callable[[list], Iterable], excluded: int,
                max_candidates: int = MAX_GROUP_CANDIDATES) -> list[list] | None:
    """Each query's first_groups, read in growing pages: `nearest(rows, n)` gives the n nearest candidates of
    each of those query rows (nearest first), or None to give up (the caller retries); `kept(candidates)` the
    ones that may be grouped (not left out, near enough). The first read is at least 64 (more for large
    answers, and `excluded` more), each further one 4x the last, until a query's groups are full, its search
    gives fewer than asked, or max_candidates were read. What Store.search_grouped and search_grouped share."""
    out: list[list | None] = [None] * queries
    pending = list(range(queries))
    n = min(max_candidates, max(64, 4 * k * group_size) + excluded)
    while pending:
        found = nearest(pending, n)
        if found is None:
            return None
        still = []
        for row, candidates in zip(pending, found):
            chosen, full = first_groups(kept(candidates), k, group_size, key_of)
            # read on while the groups are not full and there is more to read
            if full or len(candidates) < n or n >= max_candidates:
                out[row] = chosen
            else:
                still.append(row)
        pending, n = still, min(max_candidates, 4 * n)
    return out   # type: ignore[return-value]


def search_grouped(search: Callable[[np.ndarray, int], list[list]], queries: np.ndarray, k: int, group_by: str,
                   group_size: int = 1, exclude: Iterable[str] = (),
                   max_candidates: int = MAX_GROUP_CANDIDATES) -> list[list]:
    """Each query's best k groups, by their nearest item, each with its group_size nearest items: one flat
    list of hits a query, group after group (the nearest group first), each group's hits nearest first.

    `search(vectors, n)` returns the n nearest hits of each row, filters applied (e.g. MilvusStore.search).
    Items with no value for `group_by` (no label, or no such metadata key) and ids in `exclude` are skipped.
    Fewer than k groups come back when the nearest `max_candidates` items hold fewer. Store.search_grouped
    gives the same answer without making a hit of every item it reads (several times faster).
    """
    check_group_by(group_by)
    _check_group_size(group_size)
    left_out = set(check_list(exclude, "exclude="))
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, np.asarray(queries).shape[-1])
    return read_groups(lambda rows, n: search(queries[rows], n), len(queries), k, group_size,
                       lambda h: value_key(group_value(h, group_by)),
                       lambda hits: (h for h in hits if h.id not in left_out), len(left_out),
                       max_candidates)   # type: ignore[return-value]


def best_of(found: list[list], k: int, offset: int = 0) -> list:
    """Several queries' hits as one list (several photos, "near any of them"): each item once, at its best
    score over the queries, the best first; the `offset` best skipped, then k. Ask each query for offset + k."""
    best: dict[str, Any] = {}
    for hits in found:
        for h in hits:
            if h.id not in best or h.score > best[h.id].score:
                best[h.id] = h
    return sorted(best.values(), key=lambda h: -h.score)[offset:offset + k]


def search_hits(store, queries: np.ndarray, k: int, exclude: Iterable[str] = (), group_by: str | None = None,
                group_size: int = 1, offset: int = 0, **filters) -> list[list]:
    """Each query's k nearest hits in `store` (a Store or MilvusStore) with no id of `exclude` among them
    (the store is asked for as many more), or with group_by its k nearest groups (store.search_grouped);
    `offset` of them skipped first (the next page: the hits offset+1 to offset+k, or those groups);
    `filters` (label, where, max_distance) as for store.search. What the service's searches and `simsearch
    search` run after the model, whatever the query."""
    if group_by:
        found = store.search_grouped(queries, offset + k, group_by, group_size, exclude, **filters)
        if not offset:
            return found
        return [[h for _, members in group_hits(hits, group_by)[offset:] for h in members] for hits in found]
    left_out = set(check_list(exclude, "exclude="))
    found = store.search(queries, k=offset + k + len(left_out), **filters)
    if not left_out and not offset:
        return found
    return [[h for h in hits if h.id not in left_out][offset:offset + k] for hits in found]
