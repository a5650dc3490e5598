"""A gallery kept in Milvus instead of this process's folder: the same surface as `Store`, so that many
stateless API processes, on as many machines, serve and write one gallery (docs/index.md, "Galleries in
Milvus").

Each gallery is one collection ("simsearch_" + its name) of: id (primary key), seq (insertion order, for
the listing), vector, label, metadata (its JSON text, returned as stored), thumbnail (base64) and
`match`, a JSON object derived from the label and metadata that `where` filters run on. Milvus's own
JSON comparisons do not keep JSON's types apart (true == 1, a null value is a missing key, and != skips
items without the key), so `match` holds each metadata value under a key that names its type, and a
filter becomes an expression over those keys with the semantics of `index.check_where` (docs/index.md
"Filters"): the same items match in both stores (tests/index/test_milvus.py compares them).

Reads are at Milvus's Strong consistency level: every process sees every write that was acknowledged
before the read began, so positions never need to wait (`reaches` is always true).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import _filter
from ._checks import KEEP, ItemChecks, asked_for, check_list, merge_patch, parse_position
from ._errors import (InvalidItemError, ModelMismatchError, StoreClosedError, StoreError,
                      StoreMissingError, StoreUnavailableError)
from ._galleries import DEFAULT_GALLERY, _NAME, check_gallery_name
from ._facets import Facet, facet
from ._groups import MAX_GROUP_CANDIDATES, search_grouped
from ._store_search import check_tuning
from ._types import Hit, Item, exact_scores, parse_metadata, score_error, score_to_distance

log = logging.getLogger("index")

PREFIX = "simsearch_"
MAX_TEXT = 65_535          # Milvus's longest VARCHAR, in bytes
MAX_THUMBNAIL = MAX_TEXT // 4 * 3   # bytes whose base64 fits in one VARCHAR
MAX_LABEL_BYTES = 4096
_PAGE = 1000               # rows a query or a get asks for at once (Milvus caps offset + limit at 16,384)
_SCAN_PAGE = 16_000         # rows one query or iterator page reads (Milvus caps a query at 16,384)
_KEY_HASH = 16             # hex digits of a metadata key's or value's hash in `match`
_INDEXES = {               # simsearch's index kinds as Milvus index parameters (metric: inner product)
    "flat": ("FLAT", {}, {}),
    "hnsw": ("HNSW", {"M": 32, "efConstruction": 200}, {"ef": 128}),
    "ivf": ("IVF_FLAT", {"nlist": 1024}, {"nprobe": 32}),
}
MILVUS_INDEX_KINDS = tuple(_INDEXES)   # the index kinds a gallery in Milvus can have
_STRONG = "Strong"
# A Milvus Lite file's first connection: its server (in this process) sometimes answers no connection within
# pymilvus's 10 s on a loaded machine ("Fail connecting to server on 127.0.0.1:PORT"); the connection is tried
# again, up to this many times in all, this many seconds apart. A server's (a URI with "://") is tried once.
_LITE_CONNECT_TRIES = 3
_LITE_CONNECT_WAIT = 1.0
# The layout of `match` that this code writes, kept in each row as match["v"]: 1 (no "v") typed top-level keys,
# 2 (no "v") list elements too, 3 dotted paths too. A row of an older layout lacks fields that some conditions
# read (where_expression): _check_layout refuses those conditions while such rows hold what they would miss.
MATCH_LAYOUT = 3
_LAYOUT_PATH = 'match["v"]'
_OLD_ROWS = f"(not exists {_LAYOUT_PATH} or {_LAYOUT_PATH} < {MATCH_LAYOUT})"
_CURRENT_FOR = 60.0   # seconds a count of no old rows is trusted (a process of older code may still write one)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _read_spare(k: int) -> int:
    """Candidates a search of k reads past k + 1 (_search). Each is a vector over the wire (1 KB at dim 256), read
    for nothing unless an unread item could still reach the k-th score; the items within score_error of it are
    about 0.02 at k = 10 and up to a few at k in the thousands, where scores are dense (a grouped search's pages).
    With none, such a page read on, twice as many, most of the time (3x the time); with 16, a batch of 32 at k = 10
    carried 2.5x the vectors and took 1.3x the time (docs/index.md)."""
    return 2 + k // 64


@dataclass
class MilvusConfig:
    """How to reach a gallery in Milvus.

    uri: a Milvus server ("http://milvus:19530") or a Milvus Lite file
        ("./galleries.db": a Milvus in this process, for one process or for tests).
    token: "user:password" or an API key, when the server asks for one.
    db_name: the Milvus database (its default when None).
    gallery: the gallery's name (index.check_gallery_name); its collection is "simsearch_" + name.
    dim, model_id: what produced the vectors; None adopts what the collection records (it must then
        exist). Given values must match an existing collection (ModelMismatchError).
    index: "flat" (exact; the default), "hnsw" or "ivf", for a new collection.
    read_only: no writes (ReadOnlyError); a collection that does not exist is StoreMissingError.
    flush_every: rows this process writes before it asks Milvus to seal them into a segment (0 = never;
        Milvus seals on its own as well).
    """

    uri: str
    token: str | None = None
    db_name: str | None = None
    gallery: str = DEFAULT_GALLERY
    dim: int | None = None
    model_id: str | None = None
    index: str | None = None
    read_only: bool = False
    flush_every: int = 10_000


def collection_name(gallery: str) -> str:
    """The collection holding `gallery`: "simsearch_" + the name, "_" written "__" and "-" written "_d"
    (collection names take letters, digits and "_" only), so that two galleries never share one."""
    return PREFIX + check_gallery_name(gallery).replace("_", "__").replace("-", "_d")


def _gallery_of(collection: str) -> str | None:
    if not collection.startswith(PREFIX):
        return None
    out, rest = [], collection[len(PREFIX):]
    i = 0
    while i < len(rest):
        if rest[i] == "_":
            nxt = rest[i + 1:i + 2]
            if nxt not in ("_", "d"):
                return None
            out.append("_" if nxt == "_" else "-")
            i += 2
        else:
            out.append(rest[i])
            i += 1
    name = "".join(out)
    return name if _NAME.fullmatch(name) and collection_name(name) == collection else None


class _Guarded:
    """A MilvusClient whose calls raise the store's errors: StoreClosedError when the collection is gone
    (another process dropped the gallery), StoreUnavailableError when Milvus cannot be reached or
    refuses, each naming the server and what it said."""

    def __init__(self, client, uri: str):
        self._client, self._uri = client, redact(uri)
        self.reload = None   # the store's: load its collection again (a restarted Milvus Lite releases it)

    def __getattr__(self, name: str):
        call = getattr(self._client, name)
        if not callable(call):
            return call

        def guarded(*args, **kwargs):
            with _translated(self._uri):
                try:
                    return call(*args, **kwargs)
                except Exception as exc:
                    if getattr(exc, "code", None) != 101 or self.reload is None or name == "load_collection":
                        raise
                    self.reload()   # "collection not loaded": load it, then ask once more
                    return call(*args, **kwargs)
        return guarded


class _translated:
    def __init__(self, uri: str):
        self._uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, StoreError) or not _is_milvus_error(exc):
            return False
        if getattr(exc, "code", None) == 100:   # collection not found
            raise StoreClosedError(f"the gallery's collection in Milvus at {self._uri} was dropped: "
                                   f"{getattr(exc, 'message', exc)}") from exc
        raise StoreUnavailableError(f"Milvus at {self._uri}: {getattr(exc, 'message', exc)}") from exc


def _is_milvus_error(exc: BaseException) -> bool:
    from pymilvus.exceptions import MilvusException

    return isinstance(exc, (MilvusException, ConnectionError, TimeoutError))


def _client(uri: str, token: str | None, db_name: str | None):
    from pymilvus import MilvusClient   # the `milvus` extra: imported only by those who use it

    kwargs: dict[str, Any] = {"uri": uri}
    if token:
        kwargs["token"] = token
    if db_name:
        kwargs["db_name"] = db_name
    # pymilvus logs each failed call with its traceback; the store raises its own error for it, which the
    # service logs in one line
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    if "://" not in uri:   # Milvus Lite reports no session time to iterators; pymilvus warns on each, harmlessly
        logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
        try:   # Milvus Lite makes the file's folder, not its parents
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot make the folder of the Milvus Lite file {uri}: {exc}") from exc
    tries, attempt = (1 if "://" in uri else _LITE_CONNECT_TRIES), 1
    while True:
        try:
            return _Guarded(MilvusClient(**kwargs), uri)
        except Exception as exc:  # noqa: BLE001  (pymilvus raises several kinds; the message says which)
            if attempt >= tries or not _connect_failed(exc):
                raise StoreUnavailableError(f"cannot reach Milvus at {redact(uri)}: {exc}") from exc
            attempt += 1
            log.warning("index: Milvus Lite at %s answered no connection (%s); trying again in %.1f s (try %d of "
                        "%d)", uri, getattr(exc, "message", exc), _LITE_CONNECT_WAIT, attempt, tries)
            time.sleep(_LITE_CONNECT_WAIT)


def _connect_failed(exc: BaseException) -> bool:
    """Whether pymilvus's client found no server answering (its CONNECT_FAILED), not another refusal."""
    from pymilvus.exceptions import MilvusException
    from pymilvus.client.types import Status

    return isinstance(exc, MilvusException) and getattr(exc, "code", None) == Status.CONNECT_FAILED


def redact(uri: str) -> str:
    """The uri without a password (for logs and errors)."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def milvus_gallery_names(uri: str, token: str | None = None, db_name: str | None = None) -> list[str]:
    """The galleries that have a collection in this Milvus database: the default first, then by name."""
    client = _client(uri, token, db_name)
    try:
        names = {_gallery_of(c) for c in client.list_collections()} - {None}
    finally:
        client.close()
    return ([DEFAULT_GALLERY] if DEFAULT_GALLERY in names else []) + sorted(n for n in names if n != DEFAULT_GALLERY)


def drop_milvus_gallery(uri: str, gallery: str, token: str | None = None, db_name: str | None = None) -> bool:
    """Drop the gallery's collection and everything in it; False when there was none."""
    client = _client(uri, token, db_name)
    try:
        name = collection_name(gallery)
        if not client.has_collection(name):
            return False
        client.drop_collection(name)
        return True
    finally:
        client.close()


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_KEY_HASH // 2).hexdigest()


def match_fields(label: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """The `match` object of an item's label and top-level metadata keys: "l" the label's hash; for each
    metadata key (by its hash h): "e"+h for any value, and one of "h"+h (a string's hash) with "s"+h (the
    string, for ranges), "n"+h (a number), "b"+h (1 true, 0 false) or "z"+h (null). A list with scalar
    elements: "a"+h, the hashes of its elements (_element_hash: typed, so that json_contains keeps JSON's types
    apart), with "x"+h and "y"+h the least and greatest of its numbers and "p"+h and "q"+h of its strings (any
    element in a range: see where_expression). Objects, and elements that are lists or objects, get "e"+h
    alone: the keys inside an object are path_fields'."""
    out: dict[str, Any] = {}
    if label is not None:
        out["l"] = _hash(label)
    for key, value in metadata.items():
        out.update(_key_fields(key, value))
    return out


def path_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    """The `match` fields of each dotted path into the metadata's nested objects (_filter.nested_paths:
    "cam.make", not into lists), each as match_fields has a top-level key, under the hash of the path as it is
    spelt: a condition on a path is then the condition on a key of that name (where_expression), and an older
    item's top-level key spelt with the dots comes first (nested_paths leaves the path out)."""
    out: dict[str, Any] = {}
    for path, value in _filter.nested_paths(metadata):
        out.update(_key_fields(path, value))
    return out


def _key_fields(key: str, value: Any) -> dict[str, Any]:
    h = _hash(key)
    out: dict[str, Any] = {"e" + h: 1}
    if isinstance(value, str):
        out["h" + h] = _hash(value)
        out["s" + h] = value
    elif isinstance(value, bool):
        out["b" + h] = int(value)
    elif isinstance(value, (int, float)):
        out["n" + h] = value
    elif value is None:
        out["z" + h] = 1
    elif isinstance(value, list):
        out.update(_list_fields(h, value))
    return out


def _list_fields(h: str, value: list) -> dict[str, Any]:
    scalars = [v for v in value if _filter.value_key(v) != _filter.NOT_SCALAR]
    if not scalars:
        return {}
    out: dict[str, Any] = {"a" + h: sorted({_element_hash(v) for v in scalars})}
    numbers = [v for v in scalars if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [v for v in scalars if isinstance(v, str)]
    if numbers:
        out["x" + h], out["y" + h] = min(numbers), max(numbers)
    if strings:
        out["p" + h], out["q" + h] = min(strings), max(strings)
    return out


def _element_hash(value: str | int | float | bool | None) -> str:
    """A list element's hash, of its JSON type and value: numbers by value (2024 and 2024.0 are one, as
    _filter.value_key has them; an integral float is written as its integer)."""
    if isinstance(value, str):
        return _hash("s" + value)
    if isinstance(value, bool):
        return _hash("b" + str(int(value)))
    if value is None:
        return _hash("z")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _hash("n" + repr(value))


def _path(kind: str, key: str) -> str:
    return f'match["{kind}{_hash(key)}"]'


def _literal(value: str | int | float) -> str:
    """A string or number as a Milvus expression literal (strings quoted and escaped)."""
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise InvalidItemError(f"where: the Milvus store cannot compare with a string holding control "
                                   f"characters, got {value[:40]!r}")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
            .replace("\r", "\\r").replace("\t", "\\t") + '"'
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _equals(key: str, vk: Any) -> tuple[str, str]:
    """(the expression that key has the value key vk, the path whose presence it needs)."""
    if isinstance(vk, str):
        p = _path("h", key)
        return f'{p} == "{_hash(vk)}"', p
    if isinstance(vk, tuple):   # ("bool", True) / ("NoneType", None): _filter.value_key
        if vk[0] == "bool":
            p = _path("b", key)
            return f"{p} == {int(vk[1])}", p
        p = _path("z", key)
        return f"{p} == 1", p
    p = _path("n", key)
    return f"{p} == {_literal(vk)}", p


def _element_of(key: str, vks: Sequence[Any]) -> str:
    """The expression that key holds a list with an element among the value keys vks."""
    hashes = [_element_hash(vk[1] if isinstance(vk, tuple) else vk) for vk in vks]
    if len(hashes) == 1:
        return f'json_contains({_path("a", key)}, "{hashes[0]}")'
    return f'json_contains_any({_path("a", key)}, [{", ".join(chr(34) + x + chr(34) for x in hashes)}])'


def _holds(key: str, vks: Sequence[Any]) -> str:
    """The expression that key has one of the value keys vks, alone or as a list's element."""
    return "(" + " or ".join([_equals(key, vk)[0] for vk in vks] + [_element_of(key, vks)]) + ")"


def _holds_none(key: str, vks: Sequence[Any]) -> str:
    # Milvus's comparisons with a missing path are null, and so is their negation: each presence test
    # makes an item without the key (or without a list) match, as $ne and $nin ask
    terms = []
    for vk in vks:
        expr, p = _equals(key, vk)
        terms.append(f"(not exists {p} or not ({expr}))")
    terms.append(f"(not exists {_path('a', key)} or not {_element_of(key, vks)})")
    return "(" + " and ".join(terms) + ")"


def _in_range(key: str, range_: tuple) -> str:
    """A range: a scalar in it, or a list with an element above the lower bound and one (maybe another) below
    the upper one (_filter._range_ids): its greatest above the one, its least below the other."""
    kind, low, low_incl, high, high_incl = range_
    p = _path("s" if kind == "str" else "n", key)
    least, greatest = (_path("p", key), _path("q", key)) if kind == "str" else (_path("x", key), _path("y", key))
    scalar, listed = [], []   # a missing path compares as null: no exists test needed
    if low is not None:
        scalar.append(f"{p} {'>=' if low_incl else '>'} {_literal(low)}")
        listed.append(f"{greatest} {'>=' if low_incl else '>'} {_literal(low)}")
    if high is not None:
        scalar.append(f"{p} {'<=' if high_incl else '<'} {_literal(high)}")
        listed.append(f"{least} {'<=' if high_incl else '<'} {_literal(high)}")
    return f"(({' and '.join(scalar)}) or ({' and '.join(listed)}))"


_LABEL_PATH = 'match["l"]'   # an item's label's hash (match_fields), absent when it has none


def _label_condition(op: str, operand: Any) -> str:
    """A condition on where's "$label" (_filter.LABEL): the label's hash in `match` (any text, control
    characters too), a missing one as a missing key ($ne and $nin match it); a range on the label field
    itself (a null label compares as nothing, as a missing key)."""
    if op == "exists":
        return f"{'' if operand else 'not '}exists {_LABEL_PATH}"
    if op == "range":   # strings only (_filter refuses other bounds on $label)
        _kind, low, low_incl, high, high_incl = operand
        bounds = ([f"label {'>=' if low_incl else '>'} {_literal(low)}"] if low is not None else []) + \
                 ([f"label {'<=' if high_incl else '<'} {_literal(high)}"] if high is not None else [])
        return "(" + " and ".join(bounds) + ")"
    labels = [operand] if op in ("eq", "ne") else operand
    any_of = "(" + " or ".join(f'{_LABEL_PATH} == "{_hash(label)}"' for label in labels) + ")"
    # a comparison with a missing path is null, and so is its negation: the presence test lets the unlabelled in
    return any_of if op in ("eq", "in") else f"(not exists {_LABEL_PATH} or not {any_of})"


def where_expression(conditions: Iterable[_filter.Condition]) -> str:
    """A filter's conditions (index.check_where's canonical form) as one Milvus boolean expression."""
    parts = []
    for key, op, operand in conditions:
        if op == "or" or op == "and":
            parts.append("(" + f" {op} ".join(where_expression(sub) for sub in operand) + ")")
        elif key == _filter.LABEL:
            parts.append(_label_condition(op, operand))
        elif op == "eq" or op == "in":
            parts.append(_holds(key, [operand] if op == "eq" else operand))
        elif op == "ne" or op == "nin":
            parts.append(_holds_none(key, [operand] if op == "ne" else operand))
        elif op == "exists":
            parts.append(f"{'' if operand else 'not '}exists {_path('e', key)}")
        else:   # range: numbers with numbers, strings with strings
            parts.append(_in_range(key, operand))
    return " and ".join(parts)


def _layout_keys(conditions: Iterable[_filter.Condition]) -> set[str]:
    """The top-level metadata keys under which a row of an older `match` layout may hold what a condition reads
    and its `match` does not describe: a path's first key (an object there: no path fields before layout 3),
    and the key of a condition on values (eq, in, ne, nin, a range), which a list's elements answer too (none
    before layout 2). $exists on a top-level key and $label read fields every layout has."""
    keys: set[str] = set()
    for key, op, operand in conditions:
        if op == "or" or op == "and":
            for sub in operand:
                keys |= _layout_keys(sub)
        elif key != _filter.LABEL:
            if _filter.PATH_SEPARATOR in key:
                keys.add(key.split(_filter.PATH_SEPARATOR)[0])
            if op != "exists":
                keys.add(key)   # a path too: an older item may hold the top-level key "a.b" itself, as a list
    return keys


def _holds_structure(key: str) -> str:
    """The expression that a row holds an object or a list under this top-level key without element fields:
    what an older layout's `match` says of an object, and of every list before layout 2."""
    return f"(exists {_path('e', key)} and " + " and ".join(f"not exists {_path(kind, key)}" for kind in "hnbza") + ")"


def layout_match(label: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """The `match` object this code writes for an item's label and metadata (MATCH_LAYOUT)."""
    return {**match_fields(label, metadata), **path_fields(metadata), "v": MATCH_LAYOUT}


class MilvusStore(ItemChecks):
    """A gallery in a Milvus collection, with Store's methods (docs/CONTRACTS.md). Open with
    MilvusStore.open(config). Thread-safe (pymilvus's client is); writes acknowledged by Milvus."""

    @classmethod
    def open(cls, config: MilvusConfig) -> "MilvusStore":
        """Connect, and make the gallery's collection when it does not exist (not when read_only)."""
        self = cls.__new__(cls)
        self.config = config
        self.gallery = check_gallery_name(config.gallery)
        self.collection = collection_name(self.gallery)
        self._client = _client(config.uri, config.token, config.db_name)
        self._lock = threading.Lock()   # this process's read-modify-write (update) and seq
        self._last_seq = 0
        self._unflushed = 0   # rows this process wrote since its last flush
        self._closed = False
        self._current_since: float | None = None   # when a count last found no row of an older layout
        try:
            props = self._properties()
            if props is None:
                if config.read_only:
                    raise StoreMissingError(f"Milvus at {redact(config.uri)} has no collection {self.collection} "
                                            f"(gallery {self.gallery!r}) yet")
                if config.dim is None or config.model_id is None:
                    raise StoreMissingError(f"Milvus at {redact(config.uri)} has no collection {self.collection}: "
                                            "a new gallery needs the model's dim and model_id")
                props = self._create(config)
            self._load()
            self._client.reload = self._load
        except BaseException:
            self._client.close()
            raise
        self.dim = int(props["simsearch.dim"])
        self.model_id = props["simsearch.model_id"]
        self.spec = props.get("simsearch.index", "flat")
        self._made = props.get("simsearch.made")
        if (config.dim is not None and config.dim != self.dim) or \
                (config.model_id is not None and config.model_id != self.model_id):
            self._client.close()
            raise ModelMismatchError(
                f"gallery {self.gallery!r} in Milvus ({self.collection}) holds vectors of model {self.model_id!r} "
                f"(dim {self.dim}), not {asked_for(config.model_id, config.dim)}; use that model, or another gallery",
                stored_model=self.model_id)
        return self

    def _load(self) -> None:
        # a collection must be loaded to be read; a restarted Milvus (Lite) can hold it released
        from pymilvus.client.types import LoadState

        if self._client.get_load_state(self.collection).get("state") != LoadState.Loaded:
            self._client.load_collection(self.collection)

    def _properties(self) -> dict[str, str] | None:
        if not self._client.has_collection(self.collection):
            return None
        props = dict(self._client.describe_collection(self.collection).get("properties") or {})
        if "simsearch.dim" not in props:
            raise StoreError(f"the collection {self.collection} in Milvus at {redact(self.config.uri)} was not made "
                             "by simsearch (it records no model); drop it or use another gallery name")
        return props

    def _create(self, config: MilvusConfig) -> dict[str, str]:
        from pymilvus import DataType

        spec = config.index or "flat"
        if spec not in _INDEXES:
            raise InvalidItemError(f"the Milvus store's index kinds are {', '.join(_INDEXES)}; got {spec!r}")
        kind, build, _ = _INDEXES[spec]
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=4 * 1024)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(config.dim))
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_BYTES, nullable=True)
        schema.add_field("metadata", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("match", DataType.JSON)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        props = {"simsearch.dim": str(int(config.dim)), "simsearch.model_id": config.model_id,
                 "simsearch.index": spec, "simsearch.made": uuid.uuid4().hex}
        try:
            self._client.create_collection(self.collection, schema=schema, index_params=params,
                                           consistency_level=_STRONG, properties=props)
        except Exception:  # noqa: BLE001  (another process is making it at the same moment: use that one)
            # The other's collection may not be there yet when ours fails (Milvus Lite refused ours while
            # making its folder): wait for it, a few seconds at most.
            for _ in range(50):
                try:
                    made = self._properties()
                except StoreError:   # there, without its properties yet
                    made = None
                if made is not None:
                    return made
                time.sleep(0.1)
            raise
        log.info("index: made the Milvus collection %s (gallery %s, %s, dim %d, model %s)", self.collection,
                 self.gallery, spec, config.dim, config.model_id)
        return props

    # ---- checks ------------------------------------------------------------------------------

    def _describe(self) -> str:
        return f"the gallery {self.gallery!r} in Milvus"

    def _row(self, item: Item, vector: np.ndarray, seq: int, patched: bool = False) -> dict[str, Any]:
        label, meta_json, thumb, match = self._fields(item, patched)
        return {"id": item.id, "seq": seq, "vector": vector.tolist(), "label": label, "metadata": meta_json,
                "match": match, "thumbnail": base64.b64encode(thumb).decode("ascii") if thumb is not None else None}

    def _fields(self, item: Item, patched: bool = False) -> tuple[str | None, str, bytes | None, dict[str, Any]]:
        """(label, metadata JSON, thumbnail bytes, `match`) of an item to write, each checked against what a
        Milvus collection holds; InvalidItemError naming the item and what is too large."""
        label, meta_json, thumb = self._validate(item, patched)
        if len(meta_json) > MAX_TEXT:
            raise InvalidItemError(f"item {item.id!r}: metadata is {len(meta_json)} bytes of JSON, more than the "
                                   f"{MAX_TEXT} a Milvus store holds")
        if label is not None and len(label.encode("utf-8")) > MAX_LABEL_BYTES:
            raise InvalidItemError(f"item {item.id!r}: the label is {len(label.encode('utf-8'))} bytes, more than "
                                   f"the {MAX_LABEL_BYTES} a Milvus store holds")
        if thumb is not None and len(thumb) > MAX_THUMBNAIL:
            raise InvalidItemError(f"item {item.id!r}: the thumbnail is {len(thumb)} bytes, more than the "
                                   f"{MAX_THUMBNAIL} a Milvus store holds (a smaller SIMSEARCH_THUMBNAIL_SIZE)")
        meta = json.loads(meta_json)
        match = layout_match(label, meta)
        if len(json.dumps(match)) > MAX_TEXT:
            raise InvalidItemError(f"item {item.id!r}: its {len(item.metadata or {})} metadata keys (their lists' "
                                   f"elements, and the keys of the objects under them) need more than the {MAX_TEXT} "
                                   "bytes a Milvus store gives the filter fields of one item")
        return label, meta_json, thumb, match

    def _next_seqs(self, n: int) -> int:
        # insertion order across processes: the clock in microseconds, never backwards in this process
        with self._lock:
            first = max(self._last_seq + 1, time.time_ns() // 1000)
            self._last_seq = first + n - 1
        return first

    # ---- writes ------------------------------------------------------------------------------

    def upsert(self, items: Sequence[Item]) -> int:
        """Add or replace items (same id: replaced, moved to the end of the listing). All are checked
        first; an invalid one writes nothing. Acknowledged by Milvus when it returns."""
        self._check_writable()
        batch = self._unique(items)
        if not batch:
            return 0
        vecs = self._check_vectors(batch)
        seq = self._next_seqs(len(batch))
        rows = [self._row(item, vecs[j], seq + j) for j, item in enumerate(batch)]
        for i in range(0, len(rows), _PAGE):
            self._client.upsert(self.collection, rows[i:i + _PAGE])
        with self._lock:
            self._unflushed += len(rows)
            due = self.config.flush_every > 0 and self._unflushed >= self.config.flush_every
            if due:
                self._unflushed = 0
        if due:   # written and acknowledged already: a failed flush is Milvus's to retry, not this write's
            try:
                self._client.flush(self.collection)
            except StoreError as exc:
                log.warning("index: Milvus flush after %d rows failed (%s); the rows are stored", len(rows), exc)
        return len(rows)

    def update(self, id: str, label: Any = KEEP, metadata_patch: dict[str, Any] | None = None) -> Item:
        """Change an item's label and/or metadata, keeping its vector, thumbnail and place in the
        listing; as Store.update (label None removes it; metadata_patch is an RFC 7396 merge patch).
        KeyError when no item has the id. Two processes editing one item at once: the last write wins."""
        self._check_writable()
        id = self._check_update(id, metadata_patch)
        with self._lock:
            row = self._get([id], ["seq", "vector", "label", "metadata", "thumbnail"]).get(id)
            if row is None:
                raise KeyError(id)
            item = self._patched(row, label, metadata_patch)
            self._client.upsert(self.collection, [self._row(item, item.vector, int(row["seq"]), patched=True)])
        return Item(id, item.vector, item.label, json.loads(json.dumps(item.metadata)))

    def update_where(self, label: str | None = None, where: dict[str, Any] | None = None, *,
                     new_label: Any = KEEP, metadata_patch: dict[str, Any] | None = None) -> list[str]:
        """Change the label and/or metadata of every item with this label and/or matching this filter (one
        of the two is required), each as `update` changes one; returns the ids of the items changed. Every
        matching item's new label and metadata are checked first: one that would be refused refuses the call,
        naming it, with nothing changed. Then the rows are rewritten (upserted) _PAGE at a time, each page
        acknowledged by Milvus before the next: not one atomic write. Readers can see some pages changed and
        not yet others, and a failure part-way (Milvus unreachable) leaves the pages before it changed: run
        the call again (a merge patch applied twice changes nothing more). An item deleted meanwhile stays
        deleted; one another process edits meanwhile: the last write wins, as with `update`."""
        self._check_writable()
        conditions = _filter.check_where(where)
        self._check_update_where(label is not None or conditions is not None, new_label, metadata_patch)
        expr = self._filter(label, conditions)
        with self._lock:
            ids = []
            for row in self._scan(expr, ["label", "metadata"]):   # every one checked before any is written
                self._fields(self._patched(row, new_label, metadata_patch), patched=True)
                ids.append(row["id"])
            changed: list[str] = []
            for i in range(0, len(ids), _PAGE):
                rows = self._get(ids[i:i + _PAGE], ["seq", "vector", "label", "metadata", "thumbnail"])
                page = []
                for id_ in ids[i:i + _PAGE]:
                    if id_ in rows:   # not one deleted since: an upsert would bring it back
                        item = self._patched(rows[id_], new_label, metadata_patch)
                        page.append(self._row(item, item.vector, int(rows[id_]["seq"]), patched=True))
                if page:
                    self._client.upsert(self.collection, page)
                changed += [r["id"] for r in page]
        return changed

    @staticmethod
    def _patched(row: dict, label: Any, metadata_patch: dict[str, Any] | None) -> Item:
        """The item of a stored row (its vector and thumbnail when read) with `label` (KEEP: its own) and
        `metadata_patch` applied: what `update` writes back."""
        meta = json.loads(row["metadata"])
        if metadata_patch is not None:
            meta = merge_patch(meta, metadata_patch)
        thumb = row.get("thumbnail")
        vector = np.asarray(row["vector"], dtype=np.float32) if "vector" in row else None
        return Item(row["id"], vector, row.get("label") if label is KEEP else label, meta,
                    base64.b64decode(thumb) if thumb is not None else None)

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Delete items by id; returns the ids that existed (and are now gone)."""
        self._check_writable()
        ids = list(dict.fromkeys(self._check_id(i) for i in check_list(ids, "delete")))
        if not ids:
            return []
        found = self.has_ids(ids)
        gone = [i for i in ids if i in found]
        for i in range(0, len(gone), _PAGE):
            self._client.delete(self.collection, ids=gone[i:i + _PAGE])
        return gone

    def delete_where(self, label: str | None = None, where: dict[str, Any] | None = None) -> list[str]:
        """Delete every item with this label and/or matching this filter (one of the two is required);
        returns their ids."""
        self._check_writable()
        if label is None and where is None:
            raise InvalidItemError("delete_where needs a label or a where filter (it never empties the store)")
        expr = self._filter(label, _filter.check_where(where))
        return self.delete([r["id"] for r in self._scan(expr, [])])

    # ---- reads -------------------------------------------------------------------------------

    def _get(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict]:
        self._check_open()
        out: dict[str, dict] = {}
        unique = [i for i in dict.fromkeys(ids) if isinstance(i, str)]
        for i in range(0, len(unique), _PAGE):
            for row in self._client.get(self.collection, ids=unique[i:i + _PAGE], output_fields=fields,
                                        consistency_level=_STRONG):
                out[row["id"]] = row
        return out

    def _item(self, row: dict) -> Item:
        return Item(row["id"], np.asarray(row["vector"], dtype=np.float32), row.get("label"),
                    parse_metadata(row["metadata"]))

    def get(self, id: str) -> Item | None:
        """The item with this id (vector, label, metadata; thumbnail not loaded), or None."""
        return self.get_many([id])[0]

    def get_many(self, ids: Sequence[str]) -> list[Item | None]:
        """get() for many ids: one entry per id, in order, None where absent."""
        return self.items(check_list(ids, "get_many"), thumbnails=False)

    def thumbnail(self, id: str) -> bytes | None:
        """The stored thumbnail bytes of an item, or None."""
        row = self._get([id], ["thumbnail"]).get(id)
        return None if row is None or row.get("thumbnail") is None else base64.b64decode(row["thumbnail"])

    def ids(self) -> list[str]:
        """Every item's id, in listing order (one scan of the gallery; for copying it whole)."""
        return self._ordered_ids("")

    def _ordered_ids(self, expr: str) -> list[str]:
        """The ids of the items matching expr (all when empty) in listing order: one scan of their seqs."""
        return [i for _, i in self._ordered(expr)]

    def _ordered(self, expr: str) -> list[tuple[int, str]]:
        """(seq, id) of the items matching expr (all when empty), in listing order."""
        return sorted((int(r["seq"]), r["id"]) for r in self._scan(expr, ["seq"]))

    def items(self, ids: Sequence[str], thumbnails: bool = True) -> list[Item | None]:
        """The items with these ids (vector, label, metadata and, when asked, thumbnail), as
        `StoreReader.items` reads them from a folder: one entry per id, in order, None where absent."""
        check_list(ids, "items")
        rows = self._get(ids, ["vector", "label", "metadata"] + (["thumbnail"] if thumbnails else []))
        out: list[Item | None] = []
        for i in ids:
            row = rows.get(i)
            item = None if row is None else self._item(row)
            if item is not None and row.get("thumbnail") is not None:
                item.thumbnail = base64.b64decode(row["thumbnail"])
            out.append(item)
        return out

    def has_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` present in the gallery."""
        return set(self._get(list(check_list(ids, "has_ids")), ["seq"]))

    def _filter(self, label: str | None, conditions) -> str:
        parts = []
        if label is not None:   # the scalar field (Milvus can index it); its hash for what no literal can hold
            parts.append(f"label == {_literal(label)}" if not _CONTROL.search(label)
                         else f'match["l"] == "{_hash(label)}"')
        if conditions is not None:
            self._check_layout(conditions)
            parts.append("(" + where_expression(conditions) + ")")
        return " and ".join(parts)

    def _count_rows(self, expr: str) -> int:
        self._check_open()
        rows = self._client.query(self.collection, filter=expr, output_fields=["count(*)"], consistency_level=_STRONG)
        return int(rows[0]["count(*)"]) if rows else 0

    def old_layout_rows(self) -> int:
        """The number of rows written before this code's `match` layout (MATCH_LAYOUT): rows whose filter fields
        lack what some filters read, until upgrade_layout rewrites them."""
        return self._count_rows(_OLD_ROWS)

    def _check_layout(self, conditions) -> None:
        """Refuse (InvalidItemError) a filter that rows of an older `match` layout would answer wrongly: a
        condition on a path, or on values under a key where such a row holds an object or a list (_layout_keys).
        A gallery found to hold no such row is trusted for _CURRENT_FOR seconds: one count query a minute."""
        keys = _layout_keys(conditions)
        since = self._current_since
        if not keys or (since is not None and time.monotonic() - since < _CURRENT_FOR):
            return
        checked_at = time.monotonic()
        old = self.old_layout_rows()
        if old == 0:
            self._current_since = checked_at
            return
        wrong = self._count_rows(f"{_OLD_ROWS} and (" + " or ".join(_holds_structure(k) for k in sorted(keys)) + ")")
        if wrong:
            named = ", ".join(repr(k) for k in sorted(keys)[:5])
            raise InvalidItemError(
                f"where: {self._describe()} holds {old} item{'' if old == 1 else 's'} written before its filter fields "
                f"described paths into objects and lists' elements, and {wrong} of them hold an object or a list under "
                f"{'one of ' if len(keys) > 1 else ''}{named}, for which this filter would answer wrongly (a path "
                f"would miss them; $ne, $nin and $exists: false would match them). Rewrite their filter fields first "
                f"(safe while the service runs): simsearch index upgrade --milvus-uri URI --gallery {self.gallery}")

    def upgrade_layout(self, page: int = _PAGE, progress=None) -> tuple[int, list[str]]:
        """Rewrite the `match` of every row written before MATCH_LAYOUT from the row's own label and metadata,
        `page` rows a write (each page read, then upserted with its id, seq, vector, label, metadata and thumbnail
        as read: only `match` changes). Resumable: a second run finds only the rows not yet rewritten. A row
        deleted or rewritten by another process before its page is read is left alone; one edited or deleted
        by another process between its page's read and write (milliseconds) gets its page's copy back.
        progress(rewritten, total), when given, after each page. Returns (rows rewritten, ids of rows whose new
        `match` exceeds what Milvus holds: left as they were)."""
        self._check_writable()
        page = max(1, min(int(page), _PAGE))
        ids = [r["id"] for r in self._scan(_OLD_ROWS, [])]
        rewritten, too_large = 0, []
        for i in range(0, len(ids), page):
            with self._lock:
                rows = self._get(ids[i:i + page], ["seq", "vector", "label", "metadata", "thumbnail", "match"])
                out = []
                for id_ in ids[i:i + page]:
                    row = rows.get(id_)
                    if row is None or (row.get("match") or {}).get("v", 0) >= MATCH_LAYOUT:
                        continue   # deleted, or written by this code, since the scan
                    match = layout_match(row.get("label"), json.loads(row["metadata"]))
                    if len(json.dumps(match)) > MAX_TEXT:
                        too_large.append(id_)
                        continue
                    out.append({"id": id_, "seq": int(row["seq"]), "vector": [float(x) for x in row["vector"]],
                                "label": row.get("label"), "metadata": row["metadata"], "match": match,
                                "thumbnail": row.get("thumbnail")})
                if out:
                    self._client.upsert(self.collection, out)
            rewritten += len(out)
            if progress is not None:
                progress(rewritten, len(ids))
        self._current_since = None
        return rewritten, too_large

    def _scan(self, expr: str, fields: list[str]):
        """Every row matching expr (all when empty), with these fields and the id: one query when they
        fit in one, else an iterator in pages of _SCAN_PAGE."""
        self._check_open()
        rows = self._client.query(self.collection, filter=expr, output_fields=fields or ["id"], limit=_SCAN_PAGE + 1,
                                  consistency_level=_STRONG)
        if len(rows) <= _SCAN_PAGE:
            yield from rows
            return
        it = self._client.query_iterator(self.collection, batch_size=_SCAN_PAGE, filter=expr,
                                         output_fields=fields or ["id"], consistency_level=_STRONG)
        try:
            while True:
                with _translated(redact(self.config.uri)):
                    page = it.next()
                if not page:
                    return
                yield from page
        finally:
            it.close()

    def count(self, label: str | None = None, where: dict[str, Any] | None = None) -> int:
        """Number of items (with this label, and matching this metadata filter, when given)."""
        return self._count_rows(self._filter(label, _filter.check_where(where)))

    def __len__(self) -> int:
        """The number of items, count(), as Store's len(): here a count query to Milvus, not in memory
        (StoreClosedError once closed, as count())."""
        return self.count()

    def __bool__(self) -> bool:
        """True, however many items, as Store: an empty store is still an open store (`if store:` asks
        that, and asks Milvus nothing; len(store) says whether it holds anything)."""
        return True

    def labels(self) -> dict[str | None, int]:
        """Histogram of labels: label -> number of items (None for unlabelled)."""
        counts: dict[str | None, int] = {}
        for row in self._scan("", ["label"]):
            counts[row.get("label")] = counts.get(row.get("label"), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: str(kv[0])))

    def facets(self, field: str, label: str | None = None, where: dict[str, Any] | None = None) -> Facet:
        """As Store.facets, counted from the matching rows' labels and metadata, read in pages."""
        from ._groups import _field_key

        self._check_open()
        key = _field_key(field, "field")
        expr = self._filter(label, _filter.check_where(where))
        counts: dict[Any, int] = {}
        items = 0
        for row in self._scan(expr, ["label"] if key is None else ["metadata"]):
            items += 1
            if key is None:
                found = [] if row.get("label") is None else [row["label"]]
            else:   # a list: under LIST and each element's key (_filter.value_keys); a path as a filter reads it
                value = _filter.lookup(parse_metadata(row["metadata"]), key)
                found = [] if value is _filter.MISSING else _filter.value_keys(value)
            for vk in found:
                counts[vk] = counts.get(vk, 0) + 1
        return facet(field, items, counts)

    def index_metadata(self, keys: Iterable[str]) -> dict[str, int]:
        """Each key's number of distinct values (Milvus filters need no index built by simsearch)."""
        keys = list(dict.fromkeys(check_list(keys, "index_metadata", "metadata keys")))
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise InvalidItemError(f"metadata keys must be non-empty strings, got {bad[0]!r:.40}")
        values: dict[str, dict] = {k: {} for k in keys}
        for row in self._scan("", ["metadata"]):
            meta = parse_metadata(row["metadata"])
            for k in keys:
                value = _filter.lookup(meta, k)   # a top-level key, or a path into nested objects
                if value is not _filter.MISSING:
                    values[k].update(dict.fromkeys(_filter.value_keys(value)))
        return {k: _filter.distinct_values(v) for k, v in values.items()}

    def list(self, offset: int = 0, limit: int = 100, label: str | None = None,
             where: dict[str, Any] | None = None, after: int | None = None) -> list[Item]:
        """Items in insertion order (an upsert moves an item to the end), paginated; label and where
        filter as in search; after: only those listed after this listing position (Store.list)."""
        return [item for _, item in self.list_positions(offset, limit, label, where, after)]

    def list_positions(self, offset: int = 0, limit: int = 100, label: str | None = None,
                       where: dict[str, Any] | None = None, after: int | None = None) -> list[tuple[int, Item]]:
        """list(), each item with its listing position (its seq), as Store.list_positions. Reads the ids and
        positions of every matching item to order them. The page's items are read by a second query: one deleted
        in between is made up for by the next matching ones (the ids read again, on from the last position
        chosen), so that a page is short only at the end of the listing. An item replaced after it was read can be
        met again there, at its new position: the page keeps that later one only (an id at most once a page)."""
        self._check_page(offset, limit)
        after = self._check_after(after)
        expr = self._filter(label, _filter.check_where(where))
        listed: list[tuple[int, Item]] = []
        while len(listed) < limit:
            since = expr if after is None else f"seq > {after}" + (f" and ({expr})" if expr else "")
            page = self._ordered(since)[offset:offset + limit - len(listed)]
            if not page:
                break
            items = self.get_many([i for _, i in page])
            listed += [(seq, it) for (seq, _), it in zip(page, items) if it is not None]
            last = {it.id: n for n, (_, it) in enumerate(listed)}   # each id's later entry (the refill's)
            listed = [entry for n, entry in enumerate(listed) if last[entry[1].id] == n]
            after, offset = page[-1][0], 0   # the offset counted from the first `after`: skipped once
        return listed

    # ---- search ------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, label: str | None = None,
               max_distance: float | None = None, where: dict[str, Any] | None = None, *,
               nprobe: int | None = None, ef_search: int | None = None, exact: bool = False) -> list[list[Hit]]:
        """The k nearest items of each query row (inner product on unit vectors), best first; label,
        where and max_distance as in Store.search. nprobe (ivf), ef_search (hnsw) and exact as Store.search
        takes them (_tuning): Milvus's search_params nprobe and ef for this search."""
        self._check_open()
        q = self._check_vector(queries, "query", batch=True)
        k, max_distance = self._check_search(k, max_distance)
        conditions = _filter.check_where(where)
        return self._search(q, k, label, max_distance, conditions, None, self._tuning(nprobe, ef_search, exact))

    def _tuning(self, nprobe, ef_search, exact) -> dict | None:
        """Milvus's search_params for a search's own nprobe, ef_search, exact (None: the gallery's own), checked as
        Store checks them (check_tuning: the kind's parameter, nprobe 1..nlist). exact: flat as always, ivf probes
        every list (exact: IVF_FLAT's lists hold the vectors as they are); hnsw has no exact search in Milvus:
        InvalidItemError saying so."""
        nlist = _INDEXES["ivf"][1]["nlist"] if self.spec == "ivf" else None
        tuning = check_tuning(self.spec, self.dim, nlist, nprobe, ef_search, exact)
        if tuning is None:
            return None
        if tuning.exact:
            if self.spec == "hnsw":
                raise InvalidItemError("exact=True: a gallery in Milvus with an HNSW index has no exact search (Milvus "
                                       "searches only its graph); a large ef_search comes nearest")
            return {"nprobe": nlist} if nlist else {}
        return {"nprobe": tuning.nprobe} if tuning.nprobe is not None else {"ef": tuning.ef_search}

    def search_grouped(self, queries: np.ndarray, k: int, group_by: str, group_size: int = 1,
                       exclude: Iterable[str] = (), label: str | None = None, max_distance: float | None = None,
                       where: dict[str, Any] | None = None, max_candidates: int = MAX_GROUP_CANDIDATES, *,
                       nprobe: int | None = None, ef_search: int | None = None,
                       exact: bool = False) -> list[list[Hit]]:
        """Each query's k nearest groups, as Store.search_grouped: index.search_grouped over this store's
        search, for labels too (Milvus's own grouping search takes a scalar field, not a key of the metadata
        JSON; one path for both keeps their answers alike)."""
        self._tuning(nprobe, ef_search, exact)   # refused before any search
        return search_grouped(lambda v, n: self.search(v, k=n, label=label, max_distance=max_distance, where=where,
                                                       nprobe=nprobe, ef_search=ef_search, exact=exact),
                              queries, k, group_by, group_size, exclude, max_candidates)

    def search_by_id(self, id: str, k: int = 10, label: str | None = None,
                     max_distance: float | None = None, where: dict[str, Any] | None = None, *,
                     nprobe: int | None = None, ef_search: int | None = None, exact: bool = False) -> list[Hit]:
        """Neighbours of a stored item (the item itself excluded). KeyError when it is absent. nprobe,
        ef_search and exact as in search."""
        conditions = _filter.check_where(where)
        tuning = self._tuning(nprobe, ef_search, exact)   # a parameter the gallery cannot take: refused whatever the id
        item = self.get(id)
        if item is None:
            raise KeyError(id)
        k, max_distance = self._check_search(k, max_distance)
        return self._search(item.vector[None], k, label, max_distance, conditions, id, tuning)[0]

    def _search(self, q: np.ndarray, k: int, label, max_distance, conditions, exclude,
                tuning: dict | None = None) -> list[list[Hit]]:
        expr = self._filter(label, conditions)
        # Past the answer (and the left-out item): a tie across the answer's end shows, and is then read whole, so
        # that equal scores (copies of one photo) are settled by insertion order, the same for every k, as
        # Store.search settles them: pages never repeat an item. A few more (_read_spare), so that an item unread
        # within score_error of the k-th (_read_on reads on for it, twice as many) is rare
        limit = min(k + 1 + _read_spare(k) + (exclude is not None), MAX_GROUP_CANDIDATES)
        out, matching = [], []   # the count of items matching expr, once asked for

        def count() -> int:
            if not matching:
                matching.append(self._count_rows(expr))
            return matching[0]
        for qi, row in enumerate(self._nearest(q, limit, expr, exclude, tuning)):
            row = self._read_on(q[qi:qi + 1], row, k, limit, expr, exclude, tuning, count)
            hits = []
            for score, _seq, id_, label_, meta, _served in sorted(row, key=lambda r: (-r[0], r[1]))[:k]:
                distance = score_to_distance(score)
                if max_distance is not None and distance > max_distance:
                    break   # nearest first: the rest are farther
                hits.append(Hit(id_, score, distance, label_, parse_metadata(meta)))
            out.append(hits)
        return out

    def _read_on(self, q1: np.ndarray, row: list[tuple], k: int, n: int, expr: str, exclude: str | None,
                 tuning: dict | None, count) -> list[tuple]:
        """One query's `row` (_nearest's, `n` asked) made whole: the items an approximate index missed when it
        found fewer than asked while more match (a filter, or IVF's lists probed: the IVF search again, probing
        every list, exact for IVF_FLAT; HNSW's: the matching rows compared here, _scanned_rows), then read on
        (twice as many each time) while an item unread could score as much as the k-th: Milvus's score of an
        item (`served`) is within score_error of its exact_scores, so that item, a tie included, is among them.
        count() counts the items matching expr (asked once a search)."""
        margin = score_error(self.dim)
        nlist = _INDEXES["ivf"][1]["nlist"]
        exact = self.spec == "flat" or (self.spec == "ivf" and (tuning or {}).get("nprobe") == nlist)
        if not exact and len(row) < n - (exclude is not None) and count() > len(row):
            if self.spec == "hnsw":
                return self._scanned_rows(q1, expr, exclude)
            if self.spec == "ivf":
                tuning = {"nprobe": nlist}
                row = self._nearest(q1, n, expr, exclude, tuning)[0]
        while row and n < MAX_GROUP_CANDIDATES and len(row) >= n - (exclude is not None):
            scores = np.array([r[0] for r in row])
            kth = -np.partition(-scores, min(k, len(row)) - 1)[min(k, len(row)) - 1]
            if min(r[5] for r in row) + margin < kth:
                break
            n = min(2 * n, MAX_GROUP_CANDIDATES)
            row = self._nearest(q1, n, expr, exclude, tuning)[0]
        return row

    def _scanned_rows(self, q1: np.ndarray, expr: str, exclude: str | None) -> list[tuple]:
        """_nearest's rows of every item matching `expr` but `exclude`, each compared (exact_scores), the nearest
        MAX_GROUP_CANDIDATES of them: the exact answer of a filter HNSW's graph finds too few for."""
        rows = [r for r in self._scan(expr, ["seq", "vector", "label", "metadata"]) if str(r["id"]) != exclude]
        if not rows:
            return []
        scores = exact_scores(q1, np.array([r["vector"] for r in rows], dtype=np.float32)).tolist()
        found = [(s, int(r["seq"]), str(r["id"]), r.get("label"), r["metadata"], s) for s, r in zip(scores, rows)]
        return sorted(found, key=lambda r: (-r[0], r[1]))[:MAX_GROUP_CANDIDATES]

    def _nearest(self, q: np.ndarray, limit: int, expr: str, exclude: str | None,
                 tuning: dict | None = None) -> list[list[tuple]]:
        """(score, seq, id, label, metadata JSON, Milvus's score) of the `limit` nearest items of each query
        matching `expr`, nearest first by Milvus's score, `exclude` (search_by_id's own item) dropped here, not in
        the expression: an id may hold characters no Milvus literal can. The score is exact_scores' (the same for
        copies of one vector whatever they are searched with): Milvus's own rounds by an item's place in a block."""
        params = {"metric_type": "IP", "params": {**_INDEXES.get(self.spec, _INDEXES["flat"])[2], **(tuning or {})}}
        if "ef" in params["params"]:
            params["params"]["ef"] = max(params["params"]["ef"], limit)
        found = self._client.search(self.collection, data=q.tolist(), limit=limit, filter=expr,
                                    output_fields=["seq", "label", "metadata", "vector"], search_params=params,
                                    consistency_level=_STRONG)
        out = []
        for qv, hits in zip(q, found):
            hits = [h for h in hits if str(h["id"]) != exclude]
            entities = [h.get("entity") or {} for h in hits]
            scores = exact_scores(qv, np.array([e["vector"] for e in entities], dtype=np.float32).reshape(
                len(hits), self.dim)).tolist()
            out.append([(s, int(e.get("seq", 0)), str(h["id"]), e.get("label"), e["metadata"], float(h["distance"]))
                        for s, h, e in zip(scores, hits, entities)])
        return out

    # ---- the rest of Store's surface -------------------------------------------------------

    def position(self) -> str:
        """Always "0.0": every read sees every acknowledged write (Strong consistency)."""
        self._check_open()
        return "0.0"

    def reaches(self, position: str) -> bool:
        """True for any well-formed position token: no process lags another. InvalidItemError otherwise."""
        parse_position(position)
        return True

    def refresh(self) -> tuple[int, int, int]:
        """Nothing to apply: Milvus holds the one copy. (0, 0, 0)."""
        self._check_open()
        return 0, 0, 0

    def folder_changed(self) -> bool:
        """True when the gallery's collection was dropped, or dropped and made anew, since it was opened
        (by another process: this one should forget it)."""
        try:
            props = self._properties()
        except StoreUnavailableError:   # cannot tell: kept until Milvus answers
            return False
        except StoreError:
            return True
        return props is None or props.get("simsearch.made") != self._made

    def snapshot(self) -> int:
        """Flush: Milvus seals the rows it holds in memory into a segment, which its index serves (Milvus
        Lite searches unsealed rows by copying them at every search: 230 ms a search at 10,000 rows, 8
        ms once sealed, docs/results/bench_milvus_s34.json). Returns the number of items."""
        self._check_open()
        self._client.flush(self.collection)
        with self._lock:
            self._unflushed = 0
        return self.count()

    def rebuild(self, reason: str = "asked") -> None:
        """Nothing to rebuild here: Milvus maintains its own index."""

    def info(self) -> dict[str, Any]:
        """count, dim, model_id, index, index_kind, backend ("milvus"), uri (without a password), collection."""
        return {"count": self.count(), "dim": self.dim, "model_id": self.model_id, "index": self.spec,
                "index_kind": _INDEXES.get(self.spec, ("?",))[0], "exact": self.spec == "flat",
                "backend": "milvus", "uri": redact(self.config.uri), "collection": self.collection,
                "path": f"{redact(self.config.uri)}#{self.collection}"}

    def close(self) -> None:
        """Release the connection (nothing to flush: every write was acknowledged by Milvus)."""
        if self._closed:
            return
        self._closed = True
        self._client.close()

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
