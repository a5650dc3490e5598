"""index: the gallery store. SQLite (record of truth) + FAISS (derived, snapshotted).

    from index import Store, StoreConfig, Item, Hit
    store = Store.open(StoreConfig(path, dim=256, model_id=embedder.model_id))
    backup(path, dest)   # a consistent copy while another process serves the store
    store.backup(dest)   # the same of a store open here, through its connection: store.close() waits for it
    backup_galleries(data_dir, dest)   # each gallery of a data folder so, into DEST laid out as DATA is
    backup_needs(path)   # the most bytes a copy of that store can take (GET /galleries/NAME/backup checks room)
    receive_backup(dest, "shoes", write)   # a downloaded copy checked and put in DEST/galleries/shoes/index
    StoreReader(path).rows()   # ids, seqs, labels, metadata, read without loading the index
    StoreReader(path).check()  # damage: SQLite pages, vectors, metadata, the snapshot
    Store.open(StoreConfig(path, read_only=True)).refresh()   # a replica: apply another process's writes
    replica.reaches(writer.position())   # read-your-writes: has the replica applied the writer's last write?
    check_where({"year": {"$gte": 2020}})   # a metadata filter's errors, before it is used
    json.loads(text, object_pairs_hook=unique_keys)   # RepeatedKey for an object giving a key twice
    check_metadata({"album": "trip"})   # an item's metadata as every store checks it, before a write
    score_to_distance(0.9)   # the distance (the service's max_distance) of a hit whose cosine is 0.9
    vote(store.search(q, k=5)[0])   # the label the nearest items agree on (classification by retrieval)
    refine_query(q, liked_vectors, unliked_vectors)   # relevance feedback: more like these, less like those
    refine_queries(store, [q], like=["a"], unlike=["b"])   # those queries refined by the stored items' vectors
    search_hits(store, queries, k=10, exclude=["a", "b"], where={"year": 2024})   # the marked items left out
    store.search_grouped([q], k=10, group_by="label")   # the 10 nearest labels, each with its nearest item
        (group_by="metadata.product", group_size=3: products, 3 photos each)
    search_grouped(lambda v, n: store.search(v, k=n), [q], k=10, group_by="label")   # the same over any search
    best_of(search_hits(store, photos, k=10), k=10)   # several photos' hits as one: each item at its best score
    store.facets("metadata.album", where={"year": 2024})   # Facet: each album's number of items, most first
    find_duplicates(store, min_score=0.98, k=5)   # (items read, look-alike pairs), the most alike first
    gallery_path(data_dir, "shoes")   # DATA/galleries/shoes/index (the default gallery: DATA/index)
    on_read_only_disk(folder)   # whether a folder lies on a disk mounted read-only (served with read_only=True)
    incomplete(path)   # what a copy into the store that did not finish left said (None: the store is whole)
    MilvusStore.open(MilvusConfig("http://milvus:19530", gallery="shoes", dim=256, model_id=...))   # the same
        surface, the gallery in Milvus: many processes serve and write it (the `milvus` extra)
    GalleryStore   # that surface, as a typing.Protocol: what code that takes either store may use
"""
from ._backup import backup, backup_galleries, backup_needs, receive_backup
from ._checks import check_metadata
from ._db import on_read_only_disk
from ._errors import (InvalidItemError, ModelMismatchError, ReadOnlyError, StoreClosedError, StorageError,
                      StoreCorruptError, StoreError, StoreLockedError, StoreMissingError, StoreUnavailableError)
from ._duplicates import find_duplicates
from ._facets import Facet
from ._faiss import PRESETS
from ._faiss import validate_spec as check_index_kind
from ._gallery import GalleryStore
from ._feedback import LIKE_WEIGHT, UNLIKE_WEIGHT, mean_query, refine_queries, refine_query
from ._groups import (MAX_GROUP_CANDIDATES, MAX_GROUP_SIZE, MAX_GROUPED_RESULTS, MAX_K, MAX_SEARCH_WINDOW, best_of,
                      check_group_by, group_hits, group_value, search_grouped, search_hits)
from ._galleries import (DEFAULT_GALLERY, check_gallery_name, gallery_names, gallery_path, new_restore_folder,
                         remove_deleted_galleries, remove_gallery)
from ._incomplete import clear_incomplete, incomplete, mark_incomplete
from ._reader import Check, Row, StoreReader
from ._filter import RepeatedKey, check_where, unique_keys
from ._milvus import MILVUS_INDEX_KINDS, MilvusConfig, MilvusStore, drop_milvus_gallery, milvus_gallery_names
from ._store import Store
from ._types import Hit, Item, StoreConfig, score_to_distance
from ._vote import Vote, vote

PRESET_NAMES = tuple(PRESETS)

__all__ = [
    "Check", "DEFAULT_GALLERY", "Facet", "GalleryStore", "MAX_GROUP_CANDIDATES", "MAX_GROUP_SIZE",
    "MAX_GROUPED_RESULTS", "MAX_K",
    "MAX_SEARCH_WINDOW", "MILVUS_INDEX_KINDS", "best_of", "check_group_by", "group_hits",
    "group_value",
    "search_grouped", "Hit", "InvalidItemError", "Item", "LIKE_WEIGHT", "ModelMismatchError", "PRESETS",
    "PRESET_NAMES",
    "MilvusConfig", "MilvusStore", "ReadOnlyError", "StorageError", "Store", "StoreClosedError", "StoreConfig", "StoreCorruptError", "StoreError",
    "StoreLockedError", "StoreMissingError", "StoreUnavailableError", "StoreReader", "Row", "Vote", "backup",
    "backup_galleries", "backup_needs", "receive_backup", "on_read_only_disk",
    "check_gallery_name", "check_index_kind", "check_metadata", "check_where", "clear_incomplete", "incomplete",
    "mark_incomplete",
    "drop_milvus_gallery", "find_duplicates", "gallery_names", "gallery_path", "milvus_gallery_names",
    "new_restore_folder", "remove_deleted_galleries",
    "mean_query", "refine_queries", "refine_query", "remove_gallery", "score_to_distance", "search_hits", "UNLIKE_WEIGHT",
    "vote", "RepeatedKey", "unique_keys",
]
