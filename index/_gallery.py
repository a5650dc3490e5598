"""GalleryStore: what every store of a gallery offers (index.Store, a FAISS index beside SQLite in a folder;
index.MilvusStore, a Milvus collection), so that the service and the command line hold either as one type."""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from ._facets import Facet
from ._types import Hit, Item


@runtime_checkable
class GalleryStore(Protocol):
    """A gallery's items (id, vector, label, metadata, thumbnail) and searches over them. Store's docstrings
    say each method in full; MilvusStore answers alike. Both are context managers (close on exit)."""

    dim: int
    model_id: str
    spec: str   # the index kind asked for: flat, hnsw, ...

    def upsert(self, items: Sequence[Item]) -> int:
        """Add or replace items (same id: replaced, label, metadata and thumbnail included)."""

    def update(self, id: str, label: Any = ..., metadata_patch: dict[str, Any] | None = None) -> Item:
        """Change an item's label and/or metadata in place (a JSON merge patch), keeping its vector."""

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Delete items by id; the ids that existed (and are now gone)."""

    def delete_where(self, label: str | None = None, where: dict[str, Any] | None = None) -> list[str]:
        """Delete every item with this label and matching `where`; the ids gone."""

    def update_where(self, label: str | None = None, where: dict[str, Any] | None = None, *, new_label: Any = ...,
                     metadata_patch: dict[str, Any] | None = None) -> list[str]:
        """Change the label and/or metadata (a JSON merge patch) of every item with this label and matching
        `where`; the ids changed."""

    def get(self, id: str) -> Item | None:
        """The item with this id (no thumbnail), or None."""

    def get_many(self, ids: Sequence[str]) -> list[Item | None]:
        """get() for many ids: one entry per id, in order."""

    def thumbnail(self, id: str) -> bytes | None:
        """The stored thumbnail bytes of an item, or None."""

    def has_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of `ids` present."""

    def count(self, label: str | None = None, where: dict[str, Any] | None = None) -> int:
        """Number of items (with this label, matching this metadata filter)."""

    def __len__(self) -> int:
        """count(): the number of items (StoreClosedError once closed)."""

    def __bool__(self) -> bool:
        """True, however many items: an empty store is still a store (`if store:`)."""

    def labels(self) -> dict[str | None, int]:
        """label -> number of items (None for unlabelled)."""

    def facets(self, field: str, label: str | None = None, where: dict[str, Any] | None = None) -> Facet:
        """How the items spread over the values of `field` ("label" or "metadata.KEY"), most first."""

    def list(self, offset: int = 0, limit: int = 100, label: str | None = None,
             where: dict[str, Any] | None = None, after: int | None = None) -> list[Item]:
        """Items in insertion order, paginated by offset or, stable under writes, after a position."""

    def list_positions(self, offset: int = 0, limit: int = 100, label: str | None = None,
                       where: dict[str, Any] | None = None, after: int | None = None) -> list[tuple[int, Item]]:
        """list(), each item with its listing position (the cursor of the next page)."""

    def search(self, queries: np.ndarray, k: int = 10, label: str | None = None, max_distance: float | None = None,
               where: dict[str, Any] | None = None, *, nprobe: int | None = None, ef_search: int | None = None,
               exact: bool = False) -> list[list[Hit]]:
        """The k nearest items of each query row, best first. nprobe, ef_search, exact: this search's own index
        parameters (docs/CONTRACTS.md; a store whose search does not declare them takes none: the service then
        answers 422)."""

    def search_grouped(self, queries: np.ndarray, k: int, group_by: str, group_size: int = 1,
                       exclude: Iterable[str] = (), label: str | None = None, max_distance: float | None = None,
                       where: dict[str, Any] | None = None, max_candidates: int = ..., *, nprobe: int | None = None,
                       ef_search: int | None = None, exact: bool = False) -> list[list[Hit]]:
        """Each query's k nearest groups by `group_by`, each with its group_size nearest items."""

    def search_by_id(self, id: str, k: int = 10, label: str | None = None, max_distance: float | None = None,
                     where: dict[str, Any] | None = None, *, nprobe: int | None = None, ef_search: int | None = None,
                     exact: bool = False) -> list[Hit]:
        """Neighbours of a stored item (itself excluded); KeyError when it is absent."""

    def index_metadata(self, keys: Iterable[str]) -> dict[str, int]:
        """Build the filter indexes of these metadata keys now; key -> number of values."""

    def position(self) -> str:
        """Where the state searches see stands in the writer's history (a token for read-your-writes)."""

    def reaches(self, position: str) -> bool:
        """Whether the state searches see is at least as new as `position`."""

    def refresh(self) -> tuple[int, int, int]:
        """A read-only store: apply what another process wrote since."""

    def folder_changed(self) -> bool:
        """Whether the store's place no longer holds what this store opened."""

    def snapshot(self) -> int:
        """Make the index durable as it is now (a FAISS snapshot; Milvus: rows sealed)."""

    def rebuild(self, reason: str = "asked") -> None:
        """Rebuild the index from every stored vector."""

    def info(self) -> dict[str, Any]:
        """count, dim, model_id, index, index_kind, path and the like."""

    def close(self) -> None:
        """Release the store (a writer's snapshot, files, the lock)."""
