"""Errors raised by the store: all StoreError subclasses, each message naming the wrong value."""
from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class ModelMismatchError(StoreError):
    """The store holds vectors of another model or dimension than the one asked for; `stored_model` is the
    model id it holds."""

    def __init__(self, message: str, stored_model: str | None = None) -> None:
        super().__init__(message)
        self.stored_model = stored_model


class InvalidItemError(StoreError, ValueError):
    """An id, vector, label, metadata object or query is malformed."""


class StoreCorruptError(StoreError):
    """The record of truth (SQLite) cannot be read; the message says which file and why."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreClosedError(StoreError):
    """The store was used after close()."""


class StoreMissingError(StoreError):
    """A store opened read-only has not been created yet (no database, or no model recorded in it)."""


class StoreUnavailableError(StoreError):
    """The database that holds the gallery (Milvus) cannot be reached or refused a request; nothing
    was changed by the request that got it, and a retry may succeed."""


class ReadOnlyError(StoreError):
    """A write was attempted on a store opened read-only."""


class StorageError(StoreError):
    """The disk refused a write (full, read-only, failing): the write was rolled back and nothing
    changed; reads go on. `full` is True when the disk is full (space freed, writes work again)."""

    def __init__(self, message: str, full: bool):
        super().__init__(message)
        self.full = full
