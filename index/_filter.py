"""Metadata filters (`where`): parsed into a canonical, hashable form, and matched against the
store's per-key indexes of metadata values. See docs/index.md "Filters"."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ._checks import check_text
from ._errors import InvalidItemError

# A condition is (key, op, operand). Ops: "eq"/"ne" (a value key), "in"/"nin" (a tuple of value keys),
# "exists" (a bool), "range" (kind, low, low_inclusive, high, high_inclusive; None for an open end),
# and with the key "$or"/"$and": "or"/"and" (a tuple of filters, each a tuple of conditions).
Condition = tuple[str, str, Any]

_RANGE_OPS = {"$gt": (0, False), "$gte": (0, True), "$lt": (1, False), "$lte": (1, True)}
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$exists", *_RANGE_OPS)
_LOGICAL = {"$or": "or", "$and": "and"}  # {"$or": [filter, ...]}: any of them; "$and": all of them
NOT_SCALAR = ("json",)  # an object, or a list without a scalar element: found by $exists and $ne, never equal
LIST = ("list",)        # a list with a scalar element: its elements are indexed too, each as element_key(value)
_ELEMENT = "elem"
# The pseudo-key of an item's label inside `where`: a key of its own, its conditions (key "$label") matched
# against the labels (a string, or none) as a metadata key's are against its values. A metadata key that starts
# with "$" could never be filtered on, so none is written any more (index.check_metadata): this one is free.
LABEL = "$label"


# A key with dots is a path into nested objects: "cam.make" reads the key "make" of the object under "cam", in
# filters, facets and groups alike (lookup). A path never descends into a list. New metadata holds no key with a
# dot (index.check_metadata refuses one, at any depth a path reaches); an item stored before that may hold the
# top-level key "a.b" itself, and then "a.b" reads that key, as it did before paths (lookup, nested_paths).
PATH_SEPARATOR = "."
MISSING = object()   # lookup's answer for an item without a value there


def lookup(metadata: dict[str, Any], key: str) -> Any:
    """The value at `key` in an item's metadata, MISSING when it has none: the top-level key `key` when the
    item has it (without a dot, the only reading), else the path through nested objects that `key`'s dots
    spell ("cam.make": cam's make; "a.b.c": a's b's c). A path stops at anything that is not an object: it
    never descends into a list."""
    if key in metadata:
        return metadata[key]
    if PATH_SEPARATOR not in key:
        return MISSING
    value: Any = metadata
    for part in key.split(PATH_SEPARATOR):
        if type(value) is not dict or part not in value:
            return MISSING
        value = value[part]
    return value


def nested_paths(metadata: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(path, value) of every dotted path that lookup reads a value at in this metadata through nested objects
    (not its top-level keys): each key of an object under a key without a dot, at any depth, with its dotted
    path. A path that is also a top-level key of the item is left out (lookup reads that key there), and a
    nested key with a dot is never reached (no path spells it). What a store that precomputes its filters'
    fields (MilvusStore) and the FAISS store's key counts read."""
    stack = [(k, v) for k, v in metadata.items() if type(v) is dict and PATH_SEPARATOR not in k]
    while stack:   # a loop, not recursion: a deep object cannot exhaust the stack
        prefix, obj = stack.pop()
        for sub, value in obj.items():
            if PATH_SEPARATOR in sub:
                continue
            path = prefix + PATH_SEPARATOR + sub
            if path not in metadata:
                yield path, value
            if type(value) is dict:
                stack.append((path, value))


def value_key(value: Any) -> Any:
    """A metadata value as a dict key that keeps JSON's types apart and numbers by value: a string or
    a number is its own key (1 == 1.0 with one hash, so both find the same entry; "1" is another),
    true, false and null are tagged tuples (so true is not 1), a list or an object is NOT_SCALAR."""
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value  # no wrapper: a key with a value per item keeps a million of these
    if value is None or isinstance(value, bool):
        return (type(value).__name__, value)
    return NOT_SCALAR


def element_key(vk: Any) -> tuple:
    """The index key of a list element whose value key is vk: apart from the scalar vk, so that facets can
    tell the items that hold vk from those whose list holds it."""
    return (_ELEMENT, vk)


def is_element(key: Any) -> bool:
    """Whether an index key is an element_key."""
    return type(key) is tuple and key[0] == _ELEMENT


def value_keys(value: Any) -> list[Any]:
    """The index keys of a metadata value: a scalar's value_key; for a list, LIST and the element_key of each
    distinct scalar element (elements that are lists or objects are not matched), or NOT_SCALAR when it has
    none (an empty list too); NOT_SCALAR for an object."""
    if isinstance(value, list):
        elements = dict.fromkeys(element_key(vk) for vk in map(value_key, value) if vk != NOT_SCALAR)
        return [LIST, *elements] if elements else [NOT_SCALAR]
    return [value_key(value)]


def distinct_values(index: dict[Any, Any]) -> int:
    """How many distinct scalar values a key's index holds, held alone or in lists."""
    return len({key[1] if is_element(key) else key for key in index if key != LIST and key != NOT_SCALAR})


# A key's index maps value key -> ids. A value held by one item (a timestamp, a file name) maps to the
# bare id: a set per value cost 342 MiB for a million distinct values, more than their vectors.


def add(values: dict[Any, Any], vk: Any, fid: int) -> None:
    """Record that item `fid` has the value `vk`."""
    have = values.get(vk)
    if have is None:
        values[vk] = fid
    elif isinstance(have, int):
        if have != fid:
            values[vk] = {have, fid}
    else:
        have.add(fid)


def discard(values: dict[Any, Any], vk: Any, fid: int) -> None:
    """Forget that item `fid` has the value `vk` (a value no item has any more is dropped)."""
    have = values.get(vk)
    if have is None:
        return
    if isinstance(have, int):
        if have == fid:
            del values[vk]
        return
    have.discard(fid)
    if len(have) == 1:
        values[vk] = next(iter(have))


def _ids(entry: Any) -> set[int]:
    return set() if entry is None else {entry} if isinstance(entry, int) else entry


def _union(entries: Iterable[Any]) -> set[int]:
    out: set[int] = set()
    singles = []
    for e in entries:
        if isinstance(e, int):
            singles.append(e)
        else:
            out |= e
    out.update(singles)
    return out


class RepeatedKey(ValueError):
    """unique_keys' error: args[0] is the key given twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads' object_pairs_hook for JSON a user gives (a `where` filter, metadata): the object of the
    parsed pairs; RepeatedKey naming a key given twice in it, which JSON parsers settle by keeping the last
    value: {"n": {"$gte": 25}, "n": {"$lt": 5}} would filter on n < 5 alone, silently. Each caller words the
    error itself (the service's 422, the command line's message)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        raise RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


MAX_WHERE_DEPTH = 32   # $and/$or nested this deep; deeper is no filter a person writes (and ran out of stack)


def check_where(where: dict[str, Any] | None) -> tuple[Condition, ...] | None:
    """A metadata filter as a canonical tuple of conditions, all of which must hold; None for none. The key
    "$label" (LABEL) is the item's label, with string values only; a key with dots is a path into nested
    objects (lookup). numpy's numbers (np.int64(3), np.float32(0.5), np.bool_) are the numbers they hold, as in
    metadata. Raises InvalidItemError naming the key and value that are wrong."""
    if where is None:
        return None
    _check_depth(where)
    conditions = _conditions(where)   # (before check_text: it names a value that is not JSON, a set say)
    check_text(where, "where")
    return conditions


def _check_depth(where: Any) -> None:
    # counted without recursion, before the recursive parse below meets Python's stack limit
    level = [where]
    for _ in range(MAX_WHERE_DEPTH + 1):
        level = [sub for f in level if isinstance(f, dict) for op in _LOGICAL if isinstance(f.get(op), list)
                 for sub in f[op]]
        if not level:
            return
    raise InvalidItemError(f"where: $and/$or nested more than {MAX_WHERE_DEPTH} deep")


def _conditions(where: Any) -> tuple[Condition, ...]:
    if not isinstance(where, dict) or not where:  # also an empty or null filter inside $or/$and
        raise InvalidItemError('where must be a non-empty object of metadata keys and values, e.g. '
                               f'{{"source": "phone"}} or {{"year": {{"$gte": 2020}}}}; got {where!r:.80}')
    conditions: list[Condition] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise InvalidItemError(f"where: keys must be strings, got {key!r:.40}")
        if key in _LOGICAL:
            if not isinstance(value, list) or not value:
                raise InvalidItemError(f"where: {key} must be a non-empty list of filters, got {value!r:.60}")
            conditions.append((key, _LOGICAL[key], tuple(_sub_filter(key, i, sub) for i, sub in enumerate(value))))
        elif key.startswith("$") and key != LABEL:
            raise InvalidItemError(f"where: {key!r:.40} is not a logical operator nor {LABEL!r}; at the top of a "
                                   f"filter they are {', '.join(_LOGICAL)} (the others go under a key), and {LABEL} "
                                   "(the item's label)")
        elif isinstance(value, dict):
            conditions += _operators(key, value)
        else:
            conditions.append((key, "eq", _scalar_key(key, value)))
    # (key, op) pairs are unique, so operands of different types are never compared
    return tuple(sorted(conditions, key=lambda c: (c[0], c[1])))


def _sub_filter(op: str, i: int, sub: Any) -> tuple[Condition, ...]:
    if not isinstance(sub, dict):
        raise InvalidItemError(f"where: {op}[{i}] must be a filter object, got {sub!r:.60}")
    try:
        return _conditions(sub)
    except InvalidItemError as exc:
        raise InvalidItemError(f"where: {op}[{i}]: {str(exc).removeprefix('where: ')}") from None


def _plain(value: Any) -> Any:
    """A numpy number, bool or string (np.int64(3), np.float32(0.5), np.bool_(True)) as the Python one it holds, what a
    numpy- or pandas-driven caller hands over and what metadata takes (check_metadata); anything else as is."""
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return value.item()
    return value


def _scalar(key: str, value: Any, what: str = "") -> Any:
    value = _plain(value)
    if key == LABEL and not isinstance(value, str):
        _not_a_label(value, what)
    if value is not None and not isinstance(value, (str, int, float, bool)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise InvalidItemError(f"where: {key!r}{what} must be a string, number, true, false or null, "
                               f"got {value!r:.60} (operators: {', '.join(OPERATORS)})")
    return value


def _not_a_label(value: Any, what: str) -> None:
    # a label is a string or none: any other value could only ever match nothing, so it is a mistake
    raise InvalidItemError(f"where: {LABEL!r}{what} must be a string (a label is text), got {value!r:.60}; "
                           f'the unlabelled items are {{"{LABEL}": {{"$exists": false}}}}')


def _scalar_key(key: str, value: Any, what: str = "") -> Any:
    return value_key(_scalar(key, value, what))


def _operators(key: str, ops: dict[str, Any]) -> list[Condition]:
    if not ops:
        raise InvalidItemError(f"where: {key!r} has an empty object; give a value or operators "
                               f"({', '.join(OPERATORS)})")
    out: list[Condition] = []
    bounds: list[Any] = [None, None]
    inclusive = [False, False]
    for op, operand in ops.items():
        if op == "$eq" or op == "$ne":
            out.append((key, op[1:], _scalar_key(key, operand, f".{op}")))
        elif op == "$in" or op == "$nin":
            if not isinstance(operand, list) or not operand:
                raise InvalidItemError(f"where: {key!r}.{op} must be a non-empty list of values, got {operand!r:.60}")
            keys = {_scalar_key(key, v, f".{op}") for v in operand}
            out.append((key, op[1:], tuple(sorted(keys, key=repr))))
        elif op == "$exists":
            operand = _plain(operand)
            if not isinstance(operand, bool):
                raise InvalidItemError(f"where: {key!r}.$exists must be true or false, got {operand!r:.60}")
            out.append((key, "exists", operand))
        elif op in _RANGE_OPS:
            operand = _plain(operand)
            if key == LABEL and not isinstance(operand, str):
                _not_a_label(operand, f".{op}")
            if isinstance(operand, bool) or not isinstance(operand, (int, float, str)) or (
                    isinstance(operand, float) and not math.isfinite(operand)):
                raise InvalidItemError(f"where: {key!r}.{op} must be a number or a string, got {operand!r:.60}")
            end, incl = _RANGE_OPS[op]
            if bounds[end] is not None:
                raise InvalidItemError(f"where: {key!r} has two {'lower' if end == 0 else 'upper'} bounds")
            bounds[end], inclusive[end] = operand, incl
        elif isinstance(op, str) and not op.startswith("$"):   # {"cam": {"make": ...}}: the path is "cam.make"
            raise InvalidItemError(f"where: {key!r} has an unknown operator {op!r:.40}; a nested object is not "
                                   f"matched whole: for the key {op!r:.40} inside {key!r:.40}, write the path "
                                   f"{(key + PATH_SEPARATOR + op)!r:.80} (the operators are {', '.join(OPERATORS)})")
        else:
            raise InvalidItemError(f"where: {key!r} has an unknown operator {op!r:.40}; the operators are "
                                   f"{', '.join(OPERATORS)}")
    if bounds != [None, None]:
        kinds = {"str" if isinstance(b, str) else "number" for b in bounds if b is not None}
        if len(kinds) > 1:
            raise InvalidItemError(f"where: {key!r} mixes a number and a string bound ({bounds[0]!r}, {bounds[1]!r})")
        out.append((key, "range", (kinds.pop(), bounds[0], inclusive[0], bounds[1], inclusive[1])))
    return out


def matching(conditions: Iterable[Condition], index_of: Callable[[str], dict[Any, Any]],
             within: list[set[int]], universe: Callable[[], Iterable[int]]) -> set[int] | Iterable[int]:
    """The ids (FAISS ids) that satisfy every condition and are in every set of `within`.
    index_of(key) gives one metadata key's index (value key -> ids, see add); universe() every id."""
    include = list(within)
    exclude: list[set[int]] = []
    for key, op, operand in conditions:
        if op == "or":
            include.append(set().union(*(matching(sub, index_of, [], universe) for sub in operand)))
            continue
        if op == "and":
            include.extend(_as_set(matching(sub, index_of, [], universe)) for sub in operand)
            continue
        ids, included = _condition_ids(index_of(key), op, operand)
        (include if included else exclude).append(ids)
    if include:
        include.sort(key=len)
        found = include[0].intersection(*include[1:])
    elif exclude:
        found = set(universe())
    else:
        return universe()
    for ids in exclude:
        found -= ids
    return found


def _condition_ids(values: dict[Any, Any], op: str, operand: Any) -> tuple[set[int], bool]:
    """(ids, True) of the items one key's condition keeps, or (ids, False) of those it leaves out. A list
    value is held by each of its scalar elements: MongoDB's rule, any element matches ($ne/$nin: none does)."""
    if op == "eq" or op == "ne":
        held = _holding(values, operand)
        return (_ids(held[0]) if len(held) == 1 else _union(held)), op == "eq"   # one: the index's own set
    if op == "in" or op == "nin":
        return _union(e for v in operand for e in _holding(values, v)), op == "in"
    if op == "exists":   # every list with an element is under LIST: its elements need not be read
        held = values.values() if LIST not in values else (ids for vk, ids in values.items() if not is_element(vk))
        return _union(held), operand
    return _range_ids(values, operand), True


def _holding(values: dict[Any, Any], vk: Any) -> list[Any]:
    # the entries of the items whose value is vk, and of those whose list holds it
    return [e for e in (values.get(vk), values.get(element_key(vk))) if e is not None]


def _range_ids(values: dict[Any, Any], range_: tuple) -> set[int]:
    """The items with a value in the range, or a list with an element above the lower bound and an element
    (maybe another) below the upper one: MongoDB's rule, each bound a condition of its own."""
    found = _union(ids for vk, ids in values.items() if _in_range(vk, range_))
    if LIST in values:
        kind, low, low_incl, high, high_incl = range_
        bounds = ([(kind, low, low_incl, None, False)] if low is not None else []) + \
                 ([(kind, None, False, high, high_incl)] if high is not None else [])
        per_bound = [_union(ids for vk, ids in values.items() if is_element(vk) and _in_range(vk[1], b))
                     for b in bounds]
        found |= per_bound[0].intersection(*per_bound[1:])
    return found


def _as_set(ids: set[int] | Iterable[int]) -> set[int]:
    return ids if isinstance(ids, set) else set(ids)


def _in_range(vk: Any, range_: tuple) -> bool:
    kind, low, low_incl, high, high_incl = range_
    # numbers compare with numbers, strings with strings (by code point); true/false/null are tuples
    if not (isinstance(vk, str) if kind == "str" else isinstance(vk, (int, float))):
        return False
    if low is not None and (vk < low or (vk == low and not low_incl)):
        return False
    return high is None or vk < high or (vk == high and high_incl)
