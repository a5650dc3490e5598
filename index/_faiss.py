"""The derived FAISS side: presets, building and training, search parameters, snapshots, GPU."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ._errors import InvalidItemError

log = logging.getLogger("index")

# Named presets. "{nlist}" and "{m}" are filled in at training time from the gallery size and dim.
PRESETS: dict[str, str] = {
    "flat": "Flat",
    "hnsw": "HNSW32,Flat",
    "ivf": "IVF{nlist},Flat",
    # 4-bit fast-scan PQ (dim/8 bytes) trains ~10x faster than 8-bit PQ; the fp16 refine stage
    # (2*dim bytes) re-ranks k_factor*k candidates. An SQ8 refine (dim bytes) misordered close
    # neighbours: recall@10 0.987 at 100k and 0.785 at 1M clustered vectors, 1.000 with fp16
    # (docs/results/index.md, "IVF and IVF-PQ search parameters").
    "ivfpq": "IVF{nlist},PQ{m}x4fs,Refine(SQfp16)",
}
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_EF_MAX = 2048  # the most a label filter widens efSearch to
# Candidates re-ranked by the refine stage, per result: 8 gave recall@10 0.787 at 1M clustered
# vectors, 32 gave 0.996 (docs/results/index.md, "IVF and IVF-PQ search parameters").
IVFPQ_K_FACTOR = 32
IVF_NPROBE_MAX = 128
# The bounds of a search's own nprobe and ef_search (Store.search): no preset makes more lists than
# NLIST_MAX (nlist_for), and an efSearch beyond EF_SEARCH_MAX (Milvus's own bound on ef) reads about every
# vector of a gallery HNSW is worth building for: exact=True answers that question exactly.
NLIST_MAX = 16384
EF_SEARCH_MAX = 32768


def nlist_for(n: int) -> int:
    """IVF list count for a gallery of n vectors: about 4*sqrt(n), with at least 39 training
    points a list (FAISS's own minimum), clamped to [8, NLIST_MAX]."""
    return int(max(8, min(NLIST_MAX, 4 * math.sqrt(n), n // 39)))


def nprobe_for(nlist: int) -> int:
    """Lists probed per query: 1/8 of them, at least 16 and at most IVF_NPROBE_MAX (the cap acts
    from nlist 1024, about 65k items: at 1M, 500 probes cost 3.6x the time of 125 for the same
    recall on clustered vectors). Measured recall is in docs/index.md and docs/results/index.md."""
    return int(min(nlist, IVF_NPROBE_MAX, max(16, nlist // 8)))


def factory_for(spec: str, dim: int, n: int) -> str:
    """The FAISS factory string for a preset name or factory string, given the gallery size n."""
    template = PRESETS.get(spec, spec)
    m = next(m for m in (dim // 4, dim // 2, dim) if m and dim % m == 0 and m % 2 == 0)
    return template.format(nlist=nlist_for(max(n, 1)), m=m)


def needs_training(spec: str, dim: int) -> bool:
    """Whether the index kind must be trained before vectors can be added."""
    return not _new_index(factory_for(spec, dim, 100_000), dim).is_trained


def validate_spec(spec: str, dim: int) -> None:
    """Raise InvalidItemError naming the spec when FAISS cannot build it."""
    try:
        _new_index(factory_for(spec, dim, 100_000), dim)
    except Exception as exc:  # FAISS raises RuntimeError with its C++ message
        # FAISS's message begins with the C++ function and source line: "Error in ... at FILE.cpp:N: why"
        why = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip())
        raise InvalidItemError(f"index {spec!r} is not a preset ({', '.join(PRESETS)}) "
                               f"nor a valid FAISS factory string for dimension {dim}: {why[:200]}") from None


def _new_index(factory: str, dim: int) -> faiss.Index:
    # Exact search uses the inner product. Approximate kinds use L2, which ranks unit vectors
    # exactly as the inner product does (|q-x|^2 = 2 - 2<q,x>) but keeps quantisation error
    # relative to the distances between neighbours: with the inner product, embeddings that
    # share a large common component (an untrained model gives cos ~0.9998 between any two
    # images) lose their ranking in the PQ/SQ error (IVF-PQ recall@10 0.08 instead of 0.97).
    metric = faiss.METRIC_INNER_PRODUCT if factory == "Flat" else faiss.METRIC_L2
    return faiss.index_factory(dim, factory, metric)


def to_scores(index: faiss.Index, distances: np.ndarray) -> np.ndarray:
    """FAISS's result values as inner products (cosine) of unit vectors."""
    if index.metric_type == faiss.METRIC_L2:
        return 1.0 - distances / 2.0
    return distances


def build(spec: str, dim: int, train_vectors: np.ndarray | None) -> tuple[faiss.Index, str]:
    """A new empty index of kind `spec` taking int64 ids, trained on `train_vectors` when it needs
    it. With train_vectors None an index that needs training falls back to exact (Flat).
    IVF indexes take ids themselves (and renumber nothing on removal), so they are used as they
    are; everything else is wrapped in an IndexIDMap."""
    n = 0 if train_vectors is None else len(train_vectors)
    factory = factory_for(spec, dim, n)
    inner = _new_index(factory, dim)
    if not inner.is_trained:
        if train_vectors is not None and n < min_training_points(spec, dim):
            # FAISS would raise, after the writes that made the gallery due are stored: stay exact until then
            log.info("index: %r trains on at least %d vectors, not %d: exact search until the gallery holds that "
                     "many", spec, min_training_points(spec, dim), n)
            train_vectors = None
        if train_vectors is None:
            factory, inner = "Flat", _new_index("Flat", dim)
        else:
            inner.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
    hnsw = _find(inner, faiss.IndexHNSW)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if isinstance(inner, faiss.IndexIVF):
        return inner, factory
    return faiss.IndexIDMap(inner), factory


@functools.lru_cache(maxsize=64)
def min_training_points(spec: str, dim: int) -> int:
    """The fewest vectors an index of kind `spec` can be trained on (1: it needs no training). FAISS's k-means
    needs at least as many points as centroids: an IVF index's lists (nlist_for makes at least 8 of them; a
    factory string may name more), a product quantizer's 2**nbits codes a sub-vector (256 for PQ4, 16 for PQ4x4fs)
    and OPQ's 256. A store's train_threshold below it trains once the gallery reaches it (build)."""
    n = 1
    for _ in range(8):   # {nlist} grows with n: the least n that covers the centroids of the index made for n
        sample = _new_index(factory_for(spec, dim, n), dim)
        need = _centroids(sample)
        if need <= n:
            break
        n = need
    return n


def _centroids(index: faiss.Index) -> int:
    """The most centroids any k-means of training `index` looks for (0: none)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        opq = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
        return max([_centroids(index.index)] + [256 for t in opq if isinstance(t, faiss.OPQMatrix)])
    if isinstance(index, faiss.IndexRefine):
        return max(_centroids(index.base_index), _centroids(index.refine_index))
    if isinstance(index, faiss.IndexIDMap):
        return _centroids(index.index)
    most = int(index.nlist) if isinstance(index, faiss.IndexIVF) else 0
    pq = getattr(index, "pq", None)
    if isinstance(pq, faiss.ProductQuantizer):
        most = max(most, int(pq.ksub))
    if isinstance(index, faiss.IndexHNSW):
        most = max(most, _centroids(index.storage))
    return most


def _find(index: faiss.Index, cls):
    """The first index of class `cls` in a (possibly nested) index, or None."""
    index = faiss.downcast_index(index)
    while index is not None:
        if isinstance(index, cls):
            return index
        if isinstance(index, faiss.IndexIDMap):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        elif isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return None
    return None


def inner(index: faiss.Index) -> faiss.Index:
    """The index under the IndexIDMap wrapper (or the index itself: IVF has no wrapper)."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def make_room(index: faiss.Index) -> None:
    """Give an index loaded from a snapshot room to grow. FAISS reads each of its arrays to exactly its
    size, so the first addition copies them all while searches wait on the write lock (0.6-1.2 s for a
    flat index of a million vectors of 256 floats). Growing each by one element and back makes those
    copies now, at open; the unused half is address space, not resident memory. Flat and HNSW (its
    vectors and its graph); IVF's lists are many small arrays and are left as they are."""
    flat, graph = inner(index), None
    hnsw = _find(index, faiss.IndexHNSW)
    if hnsw is not None:
        flat, graph = faiss.downcast_index(hnsw.storage), hnsw.hnsw
    arrays = []
    if isinstance(flat, faiss.IndexFlatCodes) and flat.ntotal:
        arrays.append((flat.codes, flat.code_size))
    if graph is not None and hnsw.ntotal:
        arrays += [(graph.levels, 1), (graph.offsets, 1), (graph.neighbors, 1)]
    for array, step in arrays:
        size = array.size()
        array.resize(size + step)   # std::vector doubles its capacity here
        array.resize(size)          # and keeps it when it shrinks


def supports_remove(index: faiss.Index) -> bool:
    """Flat (renumbered by IndexIDMap) and IVF (own ids) can remove vectors; HNSW and refine
    indexes cannot: the store hides their removed ids with an IDSelector until a rebuild."""
    return isinstance(index, faiss.IndexIVF) or isinstance(inner(index), faiss.IndexFlat)


def is_exact(index: faiss.Index) -> bool:
    return isinstance(inner(index), faiss.IndexFlat)


# FAISS's exact search streams the whole gallery once per query (its SIMD path) unless the block of
# queries is big enough for its BLAS path, which reads the gallery once per block. Its default switch
# (queries x dim >= 128,000: 500 queries at dim 256) is far too late for the service's micro-batches
# (8-32 queries). A gallery larger than the cache is bound by memory bandwidth and BLAS wins from about
# 6 queries (1.9x at 8, 2.8x at 16 on 100k vectors). Below that the switch point depends on the machine
# as much as on the gallery: on the AMD EPYC VM of 2026-11-25 a 10k gallery kept SIMD faster up to 12-16
# queries, on the Intel Xeon VM of 2026-12-03 BLAS was 2.8x faster at 8 and won from 3. So a gallery of
# up to _MEASURE_MAX_BYTES has its switch measured, once per size class (a doubling of the gallery), on
# its own vectors. Measured with bench/bench_exact_blas.py; docs/index.md "Batched exact search".
BLAS_MIN_QUERIES = 6
_MEASURE_MAX_BYTES = 64 << 20
_MEASURE_MIN_ITEMS = 256          # smaller galleries: either path takes microseconds
_MEASURED_QUERIES = (2, 3, 4, 6, 8, 12, 16)
_measured: dict[tuple[int, int], int] = {}   # (dim, ntotal.bit_length()) -> BLAS from this many queries


def blas_min_queries(index: faiss.Index) -> int | None:
    """From how many queries exact search on this index takes the BLAS path (once tuned by
    tune_exact_search); None for an index that is not exact. The first call for a gallery of a new
    size class measures it (at most about half a second, at 64 MB of vectors)."""
    base = inner(index)
    if not isinstance(base, faiss.IndexFlat):
        return None
    if base.ntotal * base.d * 4 > _MEASURE_MAX_BYTES:
        return BLAS_MIN_QUERIES
    if base.ntotal < _MEASURE_MIN_ITEMS:
        return _MEASURED_QUERIES[-1]
    key = (base.d, base.ntotal.bit_length())
    found = _measured.get(key)
    if found is None:
        found = _measured[key] = _measure_blas_switch(base)
        log.debug("exact search of %d x %d vectors: BLAS from %d queries (measured)", base.ntotal, base.d, found)
    return found


def _measure_blas_switch(base: faiss.IndexFlat) -> int:
    """The fewest queries (of _MEASURED_QUERIES) for which the BLAS path beats the SIMD path on this
    gallery, best of three timings each, with the gallery's own vectors as queries; twice the largest
    when it never does. Both paths give the same result; only the process-wide switch moves, and it
    is put back."""
    import time

    rows = base.reconstruct_n(0, min(base.ntotal, _MEASURED_QUERIES[-1]))
    queries = np.resize(rows, (_MEASURED_QUERIES[-1], base.d))
    saved = faiss.cvar.distance_compute_blas_threshold
    try:
        for n in _MEASURED_QUERIES:
            x = np.ascontiguousarray(queries[:n])
            best = {}
            for path, threshold in (("simd", 2**31 - 1), ("blas", 1)):
                faiss.cvar.distance_compute_blas_threshold = threshold
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    base.search(x, 10)
                    times.append(time.perf_counter() - t0)
                best[path] = min(times)
            if best["blas"] < best["simd"]:
                return n
        return 2 * _MEASURED_QUERIES[-1]
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


def search_with(index, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    """index.search(queries, k, params=params), also where faiss.contrib.torch_utils has been imported (by
    pytorch-metric-learning's inference module, so by `training`): it replaces every FAISS class's search with
    one that takes torch tensors but no `params`, keeping FAISS's own as search_numpy."""
    search = getattr(index, "search_numpy", None) or index.search
    return search(queries, k, params=params)


def tune_exact_search(index: faiss.Index) -> None:
    """Set FAISS's BLAS switch (a process-wide setting) for exact search on this index: from
    blas_min_queries(index) queries. Either path gives the exact result; only the speed differs."""
    min_queries = blas_min_queries(index)
    if min_queries is None:
        return
    threshold = min_queries * inner(index).d
    if faiss.cvar.distance_compute_blas_threshold != threshold:
        faiss.cvar.distance_compute_blas_threshold = threshold


def ids_of(index: faiss.Index) -> np.ndarray:
    """The external (int64) ids the index holds."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    inv = index.invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
             for i in range(index.nlist) if inv.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def search_params(index: faiss.Index, sel, k: int, nprobe: int | None, ef_search: int | None,
                  k_factor: int | None, widen: float = 1.0):
    """(SearchParameters for this index kind, objects to keep alive while it is used): the
    selector (on external ids) plus nprobe / efSearch / k_factor, for the IVF or HNSW index wherever it
    sits (under a refine or a pre-transform too: PCA32,IVF16,Flat). `widen` (>= 1) multiplies
    nprobe and efSearch: a filter that keeps a fraction f of the gallery passes widen = 1/f so
    that as many allowed candidates are examined as an unfiltered search examines."""
    base = inner(index)
    if isinstance(base, (faiss.IndexRefine, faiss.IndexPreTransform)):
        # IndexRefine and IndexPreTransform pass only their sub-index's own parameters on (base_index_params,
        # index_params), which name the sub-index's internal ids; IndexIDMap translates only params.sel.
        # So translate for the sub-index ourselves.
        tsel = faiss.IDSelectorTranslated(index.id_map, sel) if sel is not None and base is not index else sel
        params, keep = _nested_params(base, tsel, k, nprobe, ef_search, k_factor, widen)
        return params, (keep, tsel)
    return _params_for(base, sel, k, nprobe, ef_search, widen), None


def _nested_params(index, sel, k, nprobe, ef_search, k_factor, widen):
    """(parameters, objects to keep alive) of an index under refines and pre-transforms, for the IVF or HNSW
    index at the bottom; `sel` on that bottom index's ids."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        sub, keep = _nested_params(index.base_index, sel, k, nprobe, ef_search, k_factor, widen)
        return faiss.IndexRefineSearchParameters(k_factor=float(k_factor or IVFPQ_K_FACTOR),
                                                 base_index_params=sub), (sub, keep)
    if isinstance(index, faiss.IndexPreTransform):
        sub, keep = _nested_params(index.index, sel, k, nprobe, ef_search, k_factor, widen)
        if sub is None:
            return None, keep
        return faiss.SearchParametersPreTransform(index_params=sub), (sub, keep)
    return _params_for(index, sel, k, nprobe, ef_search, widen), None


def _params_for(base, sel, k, nprobe, ef_search, widen=1.0):
    if isinstance(base, faiss.IndexHNSW):
        ef = max(ef_search or HNSW_EF_SEARCH, k)
        return faiss.SearchParametersHNSW(sel=sel, efSearch=int(min(max(ef, HNSW_EF_MAX), ef * widen)))
    if isinstance(base, faiss.IndexIVF):
        probe = nprobe or nprobe_for(base.nlist)
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(min(base.nlist, math.ceil(probe * widen))))
    if sel is None:
        return None
    return faiss.SearchParameters(sel=sel)


@functools.lru_cache(maxsize=64)
def knobs(spec: str, dim: int) -> frozenset[str]:
    """The search parameters an index of kind `spec` takes: "nprobe" where it is an IVF index (ivf,
    ivfpq), "ef_search" where it is an HNSW graph (hnsw), none for flat (exact). Decided on the kind, not
    on the index a store holds now: an IVF gallery below its training threshold searches exactly, and
    takes nprobe all the same (it will need it)."""
    sample = _new_index(factory_for(spec, dim, 100_000), dim)
    found = set()
    if _find(sample, faiss.IndexIVF) is not None:
        found.add("nprobe")
    if _find(sample, faiss.IndexHNSW) is not None:
        found.add("ef_search")
    return frozenset(found)


def nlist_of(index: faiss.Index) -> int | None:
    """The number of lists of the IVF index in `index`, or None when it holds none (flat, HNSW, or an
    IVF gallery searched exactly until it is trained)."""
    ivf = _find(index, faiss.IndexIVF)
    return None if ivf is None else int(ivf.nlist)


def exact_in_index(index: faiss.Index) -> bool:
    """Whether `index` can compare every vector it holds at full precision: flat (always), IVF-Flat (its
    lists hold the vectors as they are: probe every one, exact_params) and HNSW-Flat (its flat storage,
    search_storage). Not PQ or SQ kinds (ivfpq), whose vectors are compressed: the store compares the
    stored vectors instead."""
    return is_exact(index) or isinstance(index, faiss.IndexIVFFlat) or hnsw_storage(index) is not None


def exact_params(index: faiss.Index, sel, k: int):
    """search_params's (parameters, objects to keep alive) under which an IVF-Flat `index` probes every
    list: it then compares every vector, exactly."""
    return search_params(index, sel, k, int(index.nlist), None, None)


def hnsw_storage(index: faiss.Index) -> faiss.Index | None:
    """The flat index holding every vector of an HNSW-Flat index (its graph's storage), or None for
    another kind: exact search of an HNSW gallery searches it (search_storage)."""
    base = inner(index)
    if isinstance(index, faiss.IndexIDMap) and isinstance(base, faiss.IndexHNSW):
        storage = faiss.downcast_index(base.storage)
        if isinstance(storage, faiss.IndexFlat):
            return storage
    return None


def search_storage(index: faiss.Index, storage: faiss.Index, queries: np.ndarray, k: int,
                   sel) -> tuple[np.ndarray, np.ndarray]:
    """(distances, external ids) of the k nearest vectors in an HNSW index's flat `storage`
    (hnsw_storage), every vector compared: the exact answer of the graph's own search. `sel` selects
    external ids, as for search_params."""
    tsel = faiss.IDSelectorTranslated(index.id_map, sel) if sel is not None else None
    params = faiss.SearchParameters(sel=tsel) if tsel is not None else None
    D, I = search_with(storage, queries, k, params)
    id_map = faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
    return D, np.where(I >= 0, id_map[np.maximum(I, 0)], -1)


def flat_storage(index: faiss.Index, exact_search: bool) -> faiss.Index | None:
    """The flat index whose vectors a search of `index` compares in full through FAISS's flat code (whose BLAS
    path scores a row by its place in a block): a flat index's own, an HNSW-Flat's storage when the search is
    exact (search_storage); None for the other kinds and searches, which score each vector on its own."""
    if is_exact(index):
        return inner(index)
    return hnsw_storage(index) if exact_search else None


def vectors_by_id(index: faiss.Index, storage: faiss.Index, fids: np.ndarray) -> np.ndarray:
    """The vectors of the external ids `fids` (each held) in `storage`, flat_storage(index)."""
    ids = faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
    # ids are added in increasing order (a seq each) and removal keeps the order: a binary search finds them
    pos = np.minimum(np.searchsorted(ids, fids), len(ids) - 1)
    for j in np.flatnonzero(ids[pos] != fids).tolist():   # (were they not: each found by a scan)
        pos[j] = int(np.flatnonzero(ids == fids[j])[0])
    return storage.reconstruct_batch(pos.astype(np.int64))


def describe(index: faiss.Index) -> str:
    base = inner(index)
    name = type(base).__name__
    if isinstance(base, faiss.IndexFlat):  # index_factory gives IndexFlat, a reload IndexFlatIP
        return "IndexFlatIP" if base.metric_type == faiss.METRIC_INNER_PRODUCT else "IndexFlatL2"
    ivf = _find(base, faiss.IndexIVF)
    return f"{name}(nlist={ivf.nlist})" if ivf is not None else name


# ---- GPU -------------------------------------------------------------------------------------

def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# The most neighbours FAISS's GPU indexes select in one search (GPU_MAX_SELECTION_K in faiss/gpu): a larger k
# (offset + k up to 10,000, grouped searches and hidden deleted vectors read more) is searched on the CPU copy
GPU_MAX_K = 2048


class GpuMirror:
    """A GPU copy of the CPU index for unfiltered searches, re-copied lazily after writes.
    The CPU index stays the master (mutations, selectors, snapshots)."""

    def __init__(self) -> None:
        self._res = faiss.StandardGpuResources()
        self._gpu = None
        self._version = -1

    def get(self, index: faiss.Index, version: int):
        """The GPU copy of `index` at `version`, or None when this kind cannot run on the GPU."""
        if self._version != version:
            try:
                self._gpu = faiss.index_cpu_to_gpu(self._res, 0, index)
            except Exception as exc:  # e.g. HNSW has no GPU implementation
                log.info("index: %s stays on the CPU (%s)", describe(index), str(exc).strip()[:120])
                self._gpu = None
            self._version = version
        return self._gpu


# ---- snapshots -------------------------------------------------------------------------------

SNAPSHOT_NAME = "index.snapshot"   # its file in a store's folder
_MAGIC = b"SIMSNAP1"
_HEADER = struct.Struct("<8sQQI")  # magic, header-json length, payload length, crc32(json+payload)


@dataclass
class Snapshot:
    seq: int
    meta: dict
    index: faiss.Index


class SnapshotError(Exception):
    """The snapshot file is unreadable; the message says why."""


def write_snapshot(path: Path, payload: np.ndarray, meta: dict) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename over, fsync the folder."""
    head = json.dumps(meta, sort_keys=True).encode()
    data = memoryview(payload).cast("B")
    crc = zlib.crc32(data, zlib.crc32(head))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(_MAGIC, len(head), len(data), crc))
            f.write(head)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a part written to a full disk must not keep its space
        raise
    fsync_dir(path.parent)


def read_snapshot(path: Path) -> Snapshot:
    """Read and verify a snapshot; SnapshotError says what is wrong (truncated, bad checksum...).

    The checksum is verified in a streaming pass first (so a damaged payload never reaches FAISS's
    parser), then FAISS reads the payload straight from the file: the peak memory is the index
    itself, not the index plus a copy of the file (docs/results/benchmarks.md, P3).
    """
    try:
        with open(path, "rb") as f:
            meta, start, plen = _verify(f)
            try:
                f.seek(start)
                index = faiss.read_index(faiss.PyCallbackIOReader(_bounded_reader(f, plen), _CHUNK))
            except SnapshotError:
                raise
            except Exception as exc:
                raise SnapshotError(f"cannot decode: {str(exc).strip()[:200]}") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc}") from None
    if not isinstance(index, (faiss.IndexIDMap, faiss.IndexIVF)):
        raise SnapshotError(f"unexpected index type {type(index).__name__}")
    return Snapshot(int(meta["seq"]), meta, index)


def verify_snapshot(path: Path) -> dict:
    """The snapshot's header (seq, ntotal, model_id...) once its checksum is verified, without decoding
    the index; SnapshotError says what is wrong."""
    try:
        with open(path, "rb") as f:
            return _verify(f)[0]
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc}") from None


def _verify(f) -> tuple[dict, int, int]:
    """Check header, lengths and checksum in one streaming pass: (header, payload offset, payload length)."""
    raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise SnapshotError(f"truncated header ({len(raw)} bytes)")
    magic, hlen, plen, crc = _HEADER.unpack(raw)
    if magic != _MAGIC:
        raise SnapshotError(f"not a snapshot (magic {magic!r})")
    head = f.read(hlen)
    start = f.tell()
    have = os.fstat(f.fileno()).st_size - start
    if len(head) != hlen or have < plen:
        raise SnapshotError(f"truncated: {len(head) + max(have, 0) + _HEADER.size} of "
                            f"{hlen + plen + _HEADER.size} bytes")
    actual, left = zlib.crc32(head), plen
    while left:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            raise SnapshotError(f"truncated: payload ends {left} bytes early")
        actual, left = zlib.crc32(chunk, actual), left - len(chunk)
    if actual != crc:
        raise SnapshotError("checksum mismatch (corrupt)")
    try:
        return json.loads(head), start, plen
    except ValueError as exc:
        raise SnapshotError(f"cannot decode its header: {exc}") from None


_CHUNK = 1 << 22


def _bounded_reader(f, size: int):
    """A read callback for FAISS that never reads past the payload's `size` bytes."""
    left = size

    def read(n: int) -> bytes:
        nonlocal left
        b = f.read(min(n, left))
        left -= len(b)
        return b

    return read


def serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(index)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
