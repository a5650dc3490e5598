"""The checks every store runs on what it is given (ids, vectors, labels, metadata, thumbnails), each
error naming the wrong value, and the JSON merge patch of `update`: shared by the FAISS store and the
Milvus one so that both refuse and accept the same things."""
from __future__ import annotations

import json
import math
import numbers
from typing import Any

import numpy as np

from ._errors import InvalidItemError, ReadOnlyError, StoreClosedError
from ._types import Item

MAX_ID_LEN = 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_OFFSET = 2**62   # offset + limit must fit SQLite's 64-bit integers
KEEP = object()   # update(): the label is not changed


def check_metadata(metadata: Any, what: str = "metadata") -> str:
    """`metadata` (a dict) as the JSON a store keeps; InvalidItemError naming what is wrong: not an object,
    a key that starts with "$" or holds a "." (no filter could find it), not JSON (NaN, or an infinity such as
    1e999 read as a float), or more than MAX_METADATA_BYTES of it. What every store checks of an item's
    metadata, for a caller to check first."""
    if not isinstance(metadata, dict):
        raise InvalidItemError(f"{what} must be a JSON object (dict), got {type(metadata).__name__}")
    _check_keys(metadata, what)
    return _metadata_json(metadata, what)


def _check_keys(metadata: dict, what: str, patch: bool = False) -> None:
    """InvalidItemError naming the first key no `where` filter could ever find: a top-level key that starts
    with "$" (in a filter, an operator such as $or, or the item's label, $label), or a key holding a "." in
    `metadata` or in an object under it, at any depth (not inside a list): a filter, a facet and group_by read
    "cam.make" as the path to cam's make. In a merge `patch`, such a key given as None passes: it removes the
    key, how an older item sheds one."""
    for key, value in metadata.items():
        if isinstance(key, str) and key.startswith("$") and not (patch and value is None):
            raise InvalidItemError(f"{what}: the key {key!r:.60} starts with \"$\", which a where filter reads "
                                   "as an operator or as $label (the item's label), so no filter could find it; "
                                   "give it another name")
    objects: list[tuple[str, dict]] = [("", metadata)]
    while objects:   # a loop, not recursion: a deep object cannot exhaust the stack
        inside, obj = objects.pop()
        for key, value in obj.items():
            text = key if isinstance(key, str) else json.dumps(key)   # as JSON writes it: 1.5 -> "1.5"
            if "." in text and not (patch and value is None):
                where = f" (in {inside!r:.60})" if inside else ""
                raise InvalidItemError(
                    f"{what}: the key {text!r:.60}{where} holds a \".\", which a where filter, a facet and group_by "
                    f"read as a path into nested objects (\"cam.make\": the key make of the object cam), so no "
                    f"filter could find it; nest it ({{\"cam\": {{\"make\": ...}}}}) or give it another name")
            if type(value) is dict:
                objects.append((f"{inside}.{text}" if inside else text, value))


def _check_patch(metadata_patch: Any, what: str) -> None:
    """InvalidItemError when an update's metadata patch is neither None nor a JSON object, or sets a key that
    starts with "$" or holds a "." (the keys it sets; those an item has already stay, see
    ItemChecks._validate)."""
    if metadata_patch is None:
        return
    if not isinstance(metadata_patch, dict):
        raise InvalidItemError(f"{what} must be a JSON object (dict), got {type(metadata_patch).__name__}")
    _check_keys(metadata_patch, what, patch=True)


def _metadata_json(metadata: dict, what: str) -> str:
    try:
        meta_json = json.dumps(metadata, separators=(",", ":"), allow_nan=False, default=_numpy_scalar)
    except (TypeError, ValueError) as exc:
        raise InvalidItemError(f"{what} is not JSON-serialisable: {exc}") from None
    if len(meta_json) > MAX_METADATA_BYTES:
        raise InvalidItemError(f"{what} is {len(meta_json)} bytes of JSON, more than {MAX_METADATA_BYTES}")
    check_text(metadata, what)
    return meta_json


def _numpy_scalar(value: Any) -> Any:
    """json.dumps' `default`: a numpy scalar (np.float32(0.5), np.int64(3), np.bool_) as the Python number or
    bool it holds, what a numpy- or pandas-driven caller hands over; anything else is not JSON (TypeError)."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def check_list(values: Any, call: str, of: str = "ids") -> Any:
    """`values` (a list, tuple, set or any iterable of ids, or of metadata keys) as given; InvalidItemError when
    it is one string (or bytes) given alone, naming it: iterated, "ab" is the ids "a" and "b", so delete("ab")
    deleted the items "a" and "b" and kept "ab". `call` is how the message names the parameter: "delete" (a
    method taking only the list) or "exclude=" (a keyword)."""
    if isinstance(values, (str, bytes, bytearray, memoryview)):
        one = values if isinstance(values, (str, bytes)) else bytes(values)
        kind = "string" if isinstance(values, str) else "bytes"
        shown = f"{one!r:.80}"
        fix = f"{call}[{shown}]" if call.endswith("=") else f"{call}([{shown}])"
        raise InvalidItemError(f"{call.rstrip('=')} takes a list of {of}, got one {kind} {shown}: "
                               f"put it in a list, {fix}")
    return values


def asked_for(model_id: str | None, dim: int | None) -> str:
    """What a config asked a store to hold, as a model mismatch names it: "model 'x' (dim 8)", or the one of the two
    given ("model 'x'", "dim 16"): a config gives either, the other adopted from the store."""
    if model_id is None:
        return f"dim {dim}"
    return f"model {model_id!r}" + ("" if dim is None else f" (dim {dim})")


def check_text(value: Any, what: str) -> None:
    """InvalidItemError when a string in `value` (a JSON value: its keys too) holds a lone surrogate
    (U+D800..U+DFFF, which JSON's "\\ud800" escape can make): no UTF-8 text can carry it, so every answer
    that held it would fail to be written."""
    try:
        json.dumps(value, ensure_ascii=False, default=_numpy_scalar).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidItemError(f"{what} holds a lone surrogate ({exc.object[exc.start]!r}, a half of a UTF-16 "
                               "pair), which is not text") from None


class ItemChecks:
    """Validation of items and queries against a store's `dim` and `model_id`, and of its state
    (`_closed`, `config.read_only`), all set by the store."""

    dim: int
    model_id: str | None
    _closed: bool

    def _describe(self) -> str:
        """The store, as errors name it."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self._describe()} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.config.read_only:
            raise ReadOnlyError(f"{self._describe()} was opened read-only")

    @classmethod
    def _unique(cls, items) -> list[Item]:
        """The items with checked ids, the last of duplicate ids kept (as one write after the other would);
        InvalidItemError for one item given alone, and naming an entry that is not an index.Item (a dict, say)."""
        if isinstance(items, (Item, dict, str, bytes)):
            raise InvalidItemError(f"upsert takes a list of index.Item, got one {type(items).__name__} "
                                   f"{items!r:.80}: upsert([Item(id, vector, label, metadata)])")
        latest: dict[str, Item] = {}
        for n, item in enumerate(items):
            if not isinstance(item, Item):
                raise InvalidItemError(f"upsert: entry {n} is a {type(item).__name__}, not an index.Item: "
                                       f"{item!r:.80}; make each Item(id, vector, label, metadata, thumbnail)")
            latest[cls._check_id(item.id)] = item
        return list(latest.values())

    @staticmethod
    def _check_page(offset: Any, limit: Any) -> None:
        if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise InvalidItemError(f"offset must be a whole number from 0 to {MAX_OFFSET}, got {offset!r}")
        if not isinstance(limit, int) or not 0 <= limit <= MAX_OFFSET:
            raise InvalidItemError(f"limit must be a whole number from 0 to {MAX_OFFSET}, got {limit!r}")

    @staticmethod
    def _check_after(after: Any) -> int | None:
        """A listing position to page after (list(after=...)), or None for the first page."""
        if after is not None and (not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63):
            raise InvalidItemError(f"after must be a listing position (a whole number from 0 to 2**63-1), "
                                   f"got {after!r}")
        return after

    @staticmethod
    def _check_search(k: Any, max_distance: Any) -> tuple[int, float | None]:
        # numbers.Integral and Real: numpy's integers and floats too, which notebooks hand over
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise InvalidItemError(f"k must be a positive integer, got {k!r}")
        if max_distance is not None and (not isinstance(max_distance, numbers.Real) or isinstance(max_distance, bool)
                                         or not math.isfinite(max_distance) or max_distance < 0):
            raise InvalidItemError(f"max_distance must be a non-negative number, got {max_distance!r}")
        return int(k), (None if max_distance is None else float(max_distance))   # as FAISS and Milvus take them

    @staticmethod
    def _check_id(id_: Any) -> str:
        if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_LEN or "\x00" in id_:
            raise InvalidItemError(f"an id must be a non-empty string of at most {MAX_ID_LEN} "
                                   f"characters without NUL, got {id_!r:.80}")
        return id_

    def _check_update(self, id_: Any, metadata_patch: Any) -> str:
        """An update's id, checked, once its metadata patch is known to be a JSON object or None (`update`)."""
        id_ = self._check_id(id_)
        _check_patch(metadata_patch, f"item {id_!r}: the metadata patch")
        return id_

    @staticmethod
    def _check_update_where(selects: bool, new_label: Any, metadata_patch: Any) -> None:
        """What `update_where` is given, before any item is read: a selection (`selects`: a label or a where
        filter), something to change, a label that is a string or None, a patch that is a JSON object."""
        if not selects:
            raise InvalidItemError("update_where needs a label or a where filter: it changes only the items they "
                                   "select, never every item of the store unasked")
        if new_label is KEEP and metadata_patch is None:
            raise InvalidItemError("update_where needs new_label and/or metadata_patch: nothing to change")
        if new_label is not KEEP and new_label is not None and not isinstance(new_label, str):
            raise InvalidItemError(f"new_label must be a string or None, got {new_label!r:.80}")
        _check_patch(metadata_patch, "the metadata patch")

    def _check_vectors(self, batch: list[Item]) -> np.ndarray:
        """The items' vectors as one normalised float32 matrix (checked all at once: fast)."""
        arrs = [np.asarray(item.vector) for item in batch]
        for item, arr in zip(batch, arrs):
            if not np.issubdtype(arr.dtype, np.floating) or arr.shape != (self.dim,):
                self._check_vector(arr, f"item {item.id!r}")  # raises, naming the problem
        mat = np.stack(arrs).astype(np.float32, copy=False)
        norms = np.linalg.norm(mat, axis=1)
        bad = ~np.isfinite(norms) | (norms < 1e-12)
        if bad.any():
            j = int(np.argmax(bad))
            self._check_vector(arrs[j], f"item {batch[j].id!r}")
        return mat / norms[:, None]

    def _validate(self, item: Item, patched: bool = False):
        """(label, metadata JSON, thumbnail bytes) of an item to write. patched: its metadata is an update's,
        whose patch _check_update checked: a "$" key or a dotted key there was stored before such keys were
        refused, and stays."""
        if item.label is not None and not isinstance(item.label, str):
            raise InvalidItemError(f"item {item.id!r}: label must be a string or None, got {item.label!r:.80}")
        metadata, what = item.metadata if item.metadata is not None else {}, f"item {item.id!r}: metadata"
        meta_json = _metadata_json(metadata, what) if patched else check_metadata(metadata, what)
        thumb = item.thumbnail
        if thumb is not None and not isinstance(thumb, (bytes, bytearray, memoryview)):
            raise InvalidItemError(f"item {item.id!r}: thumbnail must be bytes, got {type(thumb).__name__}")
        return item.label, meta_json, (bytes(thumb) if thumb is not None else None)

    def _check_vector(self, v: Any, what: str, batch: bool = False) -> np.ndarray:
        """float32, L2-normalised copy; InvalidItemError naming the wrong shape, dtype or value."""
        arr = np.asarray(v)
        given = arr.shape   # as the caller gave it, for the message
        if not (np.issubdtype(arr.dtype, np.floating)):
            raise InvalidItemError(f"{what}: vector dtype must be floating point, got {arr.dtype}")
        if batch and arr.ndim == 1:
            arr = arr[None]
        want = "(n, %d) or (%d,)" % (self.dim, self.dim) if batch else "(%d,)" % self.dim
        if (batch and (arr.ndim != 2 or arr.shape[1] != self.dim)) or \
                (not batch and arr.shape != (self.dim,)):
            raise InvalidItemError(f"{what}: vector shape must be {want} for model {self.model_id!r}, "
                                   f"got {given}")
        arr = np.array(arr, dtype=np.float32, ndmin=2)
        if not np.isfinite(arr).all():
            raise InvalidItemError(f"{what}: vector contains NaN or infinity")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise InvalidItemError(f"{what}: vector has zero length (cannot be normalised)")
        return np.ascontiguousarray(arr / norms, dtype=np.float32)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: an object patch merges key by key (None removes), anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def parse_position(position: str) -> tuple[int, int]:
    """The (sequence number, edits) of a `Store.position()` token; InvalidItemError when malformed."""
    seq, dot, edits = position.partition(".") if isinstance(position, str) else ("", "", "")
    if not (dot and seq.isascii() and seq.isdigit() and edits.isascii() and edits.isdigit()
            and len(seq) <= 19 and len(edits) <= 19):
        raise InvalidItemError(f"a store position is two whole numbers joined by a dot, like '1042.7' "
                               f"(what a write answered), got {str(position)[:40]!r}")
    return int(seq), int(edits)
