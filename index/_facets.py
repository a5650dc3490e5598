"""Facet counts: how the items that match a filter spread over one field's values (a label, or a metadata key).

What a curator asks of a gallery before searching it: which labels, albums or sources it holds and how
many of each, under the filters a search would use (Qdrant's facet counts, Weaviate's aggregate).
Each store counts its own way (Store from its label and key indexes, MilvusStore by reading the rows);
`facet` turns the counts into the answer both give.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._filter import LIST, NOT_SCALAR, is_element


@dataclass
class Facet:
    """The items that match a filter, by their value of `field` ("label" or "metadata.KEY"; a KEY with dots
    is a path into nested objects, "metadata.cam.make", read as a `where` filter reads it).

    values: (value, items) of each value, the most common first (a tie: by the value's text). A metadata
    value counts when it is a JSON scalar (a string, a number, true, false or null); 2024 and 2024.0 are one.
    A list counts once under each distinct scalar element (["red", "blue"]: one for each), so the counts of
    a key holding lists may add up to more than its items. missing: items with no value (no label; no such
    key or path). not_scalar: items whose value is an object, or a list with no scalar element (an empty one too).
    """

    field: str
    items: int
    values: list[tuple[Any, int]]
    missing: int
    not_scalar: int = 0


def facet(field: str, items: int, counts: dict[Any, int]) -> Facet:
    """The Facet of `items` matching items whose values, as _filter.value_keys makes them, were counted in
    `counts` (items with no value are not in it: they are the rest)."""
    counts = dict(counts)
    not_scalar, lists = counts.pop(NOT_SCALAR, 0), counts.pop(LIST, 0)
    merged: dict[Any, int] = {}
    valued = lists   # items with a value: a scalar's holders, and each list with a scalar element once
    for vk, n in counts.items():
        if is_element(vk):
            vk = vk[1]
        else:
            valued += n
        merged[vk] = merged.get(vk, 0) + n
    values = [(_value(vk), n) for vk, n in merged.items() if n]
    values.sort(key=lambda vn: (-vn[1], str(vn[0])))
    return Facet(field, items, values, items - valued - not_scalar, not_scalar)


def _value(value_key: Any) -> Any:
    # value_key wraps true, false and null as (type name, value); strings and numbers are themselves
    return value_key[1] if isinstance(value_key, tuple) else value_key
