"""index: the gallery store. SQLite (record of truth) + FAISS (derived, snapshotted).

    from index import Store, StoreConfig, Item, Hit
    store = Store.open(StoreConfig(path, dim=256, model_id=embedder.model_id))
    backup(path, dest)   # a consistent copy while another process serves the store
"""
from ._backup import backup
from ._errors import (InvalidItemError, ModelMismatchError, ReadOnlyError, StoreClosedError,
                      StoreCorruptError, StoreError, StoreLockedError)
from ._faiss import PRESETS
from ._store import Store
from ._types import Hit, Item, StoreConfig

PRESET_NAMES = tuple(PRESETS)

__all__ = [
    "Hit", "InvalidItemError", "Item", "ModelMismatchError", "PRESETS", "PRESET_NAMES",
    "ReadOnlyError", "Store", "StoreClosedError", "StoreConfig", "StoreCorruptError", "StoreError",
    "StoreLockedError", "backup",
]
