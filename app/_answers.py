"""What the routes answer: the error responses each route documents (_ERRORS), the position header a write
answers with, the errors for a write that was refused, and search results, hits, votes and items as JSON.
index (FAISS) is imported inside the functions that use it: the service answers /healthz before FAISS and
torch load."""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from starlette.responses import JSONResponse

from ._batcher import SearchParams
from ._errors import REQUEST_ID, ApiError
from ._schemas import ErrorResponse, ItemOut
from ._service import Gallery, Service

log = logging.getLogger("simsearch.app")

# Read-your-writes across replicas: every write answers with the gallery's position after it, and a read
# that sends it back is answered from a state at least that new (docs/service.md, "Reading your own writes").
POSITION_HEADER = "X-Simsearch-Position"


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "a file part is missing, empty, corrupt or truncated; malformed multipart; a malformed X-Simsearch-After",
        401: "the API key is missing",
        403: "the API key is not one of the service's keys (`invalid_api_key`), or its scope does not allow this "
             "request (`key_scope`); app/_openapi.py declares on each operation the reasons it can have",
        413: "the body, a field, the number of parts or the image's pixel count is over a limit",
        415: "not a JPEG, PNG, WebP, GIF, BMP, AVIF or HEIC image (decided from the bytes)",
        404: "no item with this id; no gallery of that name",
        409: "X-Simsearch-After names a position this gallery never had; a JSON vector's `model` is not this "
             "service's; the gallery holds another model's vectors (model_mismatch: reembed it, or delete it)",
        422: "a parameter, id, label or metadata is invalid", 429: "rate limited",
        503: "not ready, or over the concurrency limit; for a write, the index cannot take writes",
        507: "the service's disk is full: the write was not stored"}.items()}


def _position(g: Gallery) -> dict[str, str]:
    """The header that tells a client where the gallery stands after its write."""
    return {POSITION_HEADER: g.store.position()}


def _read_only() -> ApiError:
    return ApiError(405, "read_only", "this service serves its index read-only (SIMSEARCH_READ_ONLY): add, "
                                      "change and delete items through the service that owns the index",
                    {"Allow": "GET, HEAD"})   # what a read-only service does on the paths that write


def _write_refused(exc: Exception, service: Service) -> ApiError:
    """The answer to a write the store did not make (it changed nothing). A disk that is full or
    failing is the operator's to fix: its path and free space go to the log (the first of a run of
    refusals, then a count a minute: service.refusals), not to the client."""
    import index as index_pkg

    if isinstance(exc, index_pkg.ReadOnlyError):
        return _read_only()
    if isinstance(exc, index_pkg.InvalidItemError):   # what the request asked, refused by the store (it says why)
        return ApiError(422, "invalid_parameter", str(exc))
    if not isinstance(exc, index_pkg.StorageError):  # closed while shutting down
        return ApiError(503, "index_unavailable", f"the index cannot take writes: {exc}", {"Retry-After": "5"})
    if service.refusals.refused(exc.full):
        log.error("write refused by the disk (request %s): %s", REQUEST_ID.get(), exc)
    if exc.full:
        return ApiError(507, "insufficient_storage", "the service's disk is full: this write was not stored and "
                        "changed nothing; searches still work. Retry once the operator has freed space")
    return ApiError(503, "index_unavailable", "the service's disk refused this write: it was not stored and "
                    "changed nothing; searches still work", {"Retry-After": "30"})


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _hit_dict(h) -> dict[str, Any]:
    score = min(1.0, max(-1.0, _finite(h.score)))  # float32 rounding can put a self-match at 1.0000001
    return {"id": h.id, "score": score, "distance": _finite(h.distance), "label": h.label, "metadata": h.metadata}


def _vote_dict(hits) -> dict[str, Any]:
    from index import vote   # imported when used: the app answers /healthz before torch and FAISS load

    decided = vote(hits)
    return {"label": decided.label, "confidence": decided.confidence, "votes": decided.votes}


def _results(hits, group_by: str | None, offset: int) -> dict[str, Any]:
    """`results` of an answer, and with group_by its `groups` (the same hit objects, grouped; a `note` when
    there are none on a first page)."""
    results = [_hit_dict(h) for h in hits]
    if not group_by:
        return {"results": results}
    from index import group_hits   # when used (module docstring)

    as_dict = {id(h): d for h, d in zip(hits, results)}
    answer = {"results": results, "groups": [{"value": value, "results": [as_dict[id(h)] for h in members]}
                                             for value, members in group_hits(hits, group_by)]}
    if not hits and not offset:   # an empty answer by itself reads as a broken search, or a gallery with nothing in it
        answer["note"] = (f"no groups: no item found has a value for {group_by} (items without one are skipped; "
                          "GET /facets?field=" + group_by + " counts the items that have one)")
    return answer


def _search_answer(service: Service, hits, params: SearchParams, t0: float, vote: bool) -> JSONResponse:
    """A SearchResponse, built by hand and sent as is: validating the response model again costs
    event-loop time on the hottest route (docs/results/benchmarks.md, P5); the model still documents it."""
    answer = {**_results(hits, params.group_by, params.offset), "k": params.k,
              "took_ms": (time.perf_counter() - t0) * 1000,
              "model": service.model_id, "reranked": params.rerank is not None, "candidates": params.rerank,
              "offset": params.offset}
    if vote:
        answer["vote"] = _vote_dict(hits)
    return JSONResponse(answer)


def _item_out(item, vector: bool) -> ItemOut:
    return ItemOut(id=item.id, label=item.label, metadata=item.metadata,
                   vector=item.vector.tolist() if vector else None)
