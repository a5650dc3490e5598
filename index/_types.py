"""The store's value types: configuration, items and search hits; and the decoding of a stored row's vector
and metadata, which every part of the FAISS store and StoreReader share."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson


@dataclass
class StoreConfig:
    """How to open a store.

    path: folder holding store.sqlite3 (the record of truth) and index.snapshot (derived).
    dim, model_id: what produced the vectors. None means "whatever the existing store records"
        (the store must then exist); given values must match an existing store.
    index: "flat" (exact, default for a new store), "hnsw", "ivf", "ivfpq", or any FAISS factory
        string (inner-product metric). None means "the kind the store already uses, else flat".
    use_gpu: None = GPU FAISS when faiss-gpu and a GPU are present; False = never; True = want it
        (a warning, and the CPU, when there is none).
    train_threshold: gallery size at which an index that needs training (IVF, PQ) is trained;
        below it the store searches exactly.
    snapshot_every: writes after which a snapshot is written in the background (0 = only on
        snapshot() and close()).
    nprobe, ef_search, k_factor: override the search parameters of the approximate presets.
    read_only: no writes, no lock, no snapshots (for inspecting a store another process serves).
    """

    path: Path
    dim: int | None = None
    model_id: str | None = None
    index: str | None = None
    use_gpu: bool | None = None
    train_threshold: int = 10_000
    snapshot_every: int = 50_000
    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None
    read_only: bool = False

    def __post_init__(self) -> None:
        self.path = Path(self.path)


@dataclass(frozen=True)
class SearchTuning:
    """A search's own index parameters, which replace the store's (StoreConfig's nprobe and ef_search)
    for that search: nprobe (IVF lists probed), ef_search (HNSW candidates kept), or exact (every
    vector compared at full precision). Store.search checks them (_store_search.check_tuning)."""

    nprobe: int | None = None
    ef_search: int | None = None
    exact: bool = False


@dataclass
class Item:
    """One gallery entry. vector is float32 (dim,); it is stored L2-normalised."""

    id: str
    vector: np.ndarray
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    thumbnail: bytes | None = None


@dataclass
class Hit:
    """One search result: score is the inner product (cosine) and distance = sqrt(2 - 2 * score)."""

    id: str
    score: float
    distance: float
    label: str | None
    metadata: dict[str, Any]


def exact_scores(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The scores (inner products) of one query with each row of `vectors`, as every exact answer gives them:
    a function of (query, vector) alone. Each product of two float32s is exact in float64 and their float64 sum is
    rounded to float32 once, so a score is the true inner product rounded, whatever else is scored with it; FAISS's
    BLAS and SIMD paths, numpy's matmul and Milvus round a row differently by its place in a block, up to
    score_error apart, which gave exact copies of one vector different scores (ranked out of insertion order)."""
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    return (np.asarray(vectors, dtype=np.float64) * q).sum(axis=1).astype(np.float32)


def score_error(dim: int) -> float:
    """How far a float32 score of unit vectors of `dim` floats, however computed (an inner product, or 1 - L2/2),
    can be from exact_scores': a float32 sum of dim products is within dim units of its last place (2**-24 each)
    of the true value, and an L2 distance halved doubles that; with room for the norms' own rounding."""
    return 2.0 * (dim + 4) * 2.0 ** -24


def score_to_distance(score: float) -> float:
    """Euclidean distance between unit vectors whose inner product is `score`."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * score))


_LONG_DIGITS = re.compile(r"\d{19}")   # an integer beyond 64 bits has at least 19 digits in a row


def parse_metadata(text: str) -> dict[str, Any]:
    """A stored metadata object, parsed: by orjson, about 10x faster than json (docs/results/benchmarks.md,
    43rd session: a search of many items spends most of its time here), except where orjson would differ:
    an integer beyond 64 bits (orjson makes it a float) or a lone surrogate (orjson refuses it) goes to json."""
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def vectors_from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """Stored vectors (each dim float32s as bytes) as one read-only (len(blobs), dim) matrix."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


def item_from_row(row) -> Item:
    """The Item of a stored row (id, vector bytes, label, metadata json), its thumbnail not loaded."""
    id_, blob, label, meta = row
    return Item(id=id_, vector=np.frombuffer(blob, dtype=np.float32).copy(), label=label,
                metadata=parse_metadata(meta))
