"""The search routes: POST /search, /classify, /batch/search, /embed and /search/{id}, and how a search
request's images, vectors and like/unlike marks become the queries searched. CPU work (decoding, the model,
FAISS) runs in threads, never on the event loop. index (FAISS) is imported inside the functions that use it:
the service answers /healthz before FAISS and torch load."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Annotated

import anyio.to_thread
import numpy as np
from fastapi import Path, Query, Request
from starlette.responses import JSONResponse

from model import Crop

from ._answers import _ERRORS, _hit_dict, _results, _search_answer, _vote_dict
from ._batcher import SearchParams
from ._bodies import (_batch_queries, _batch_search_body, _embed_body, _file_parts, _is_raw_image, _media_type,
                      _query_vector, _read_body, _read_form, _search_body, _uploads)
from ._embedding import _embedded
from ._errors import ApiError
from ._params import (BatchSearchQuery, ClassifyQuery, SearchByIdQuery, SearchQuery, _after, _check_crop, _check_id,
                      _crop_param, _no_crop_for_vectors, _reading, _router, _service)
from ._schemas import BatchSearchResponse, ClassifyResponse, EmbedResponse, SearchResponse
from ._service import Gallery, Service

router = _router()


@router.post("/search", response_model=SearchResponse, tags=["search"],
             summary="the k gallery items nearest to an uploaded image",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_search_body())
async def search(request: Request, q: Annotated[SearchQuery, Query()], after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, q.gallery)
    params = q.params(service, g.name)
    hits = await _search_request(request, service, g, params, q.region, q.like, q.unlike, q.combine)
    return _search_answer(service, hits, params, t0, q.vote)


async def _search_one(request: Request, service: Service, params: SearchParams, crop: Crop | None = None) -> list:
    """The hits of the one query a request carries: an image (a multipart `file` part or the body), or
    its region `crop`, or several images together (several `file` parts: their mean), or a JSON vector."""
    media_type = _media_type(request.headers.get("content-type", ""))
    if media_type == "application/json":  # a vector: no image, no model; the store only
        _no_crop_for_vectors(crop)
        vector = _query_vector(await _read_body(request), service.embedder.dim, service.model_id)
        hits = await anyio.to_thread.run_sync(service.search, vector, params)
    else:
        files = await _uploads(request, media_type)
        if len(files) > 1:   # several photos of what is wanted: one query, their mean
            vectors, _ = await _embedded(service, files, crop)
            hits = await anyio.to_thread.run_sync(service.search, _together(vectors), params)
        else:
            # Decoded in the batcher's threads, a batch at a time: one thread hop per batch.
            _, hits = await _embedded(service, files, crop, params)
    return hits[0]


def _together(vectors: np.ndarray) -> np.ndarray:
    """(1, dim): the unit mean of the images' vectors, the one query several photos of a thing make; 422 when
    they cancel out (no direction is left to search in)."""
    from index import mean_query   # when used (module docstring)

    try:
        return mean_query(vectors)[None]
    except ValueError:
        raise ApiError(422, "invalid_query", f"the {len(vectors)} images point opposite ways in the model's space: "
                                             "their mean is no direction to search in; search with combine=best "
                                             "(items near any of them)") from None


async def _request_queries(request: Request, service: Service, crop: Crop | None) -> np.ndarray | None:
    """The query vectors a request carries, (n, dim): a JSON vector, or its images embedded (or their region
    `crop`); None for a request with no body at all (a search by liked items alone)."""
    media_type = _media_type(request.headers.get("content-type", ""))
    if media_type == "application/json":
        _no_crop_for_vectors(crop)
        return _query_vector(await _read_body(request), service.embedder.dim, service.model_id)
    if not media_type and not await _read_body(request):
        return None   # (a body without a Content-Type is refused by _uploads, as for any search)
    files = await _uploads(request, media_type)
    vectors, _ = await _embedded(service, files, crop)
    return vectors


async def _search_request(request: Request, service: Service, g: Gallery, params: SearchParams,
                          crop: Crop | None, like: list[str], unlike: list[str], combine: str) -> list:
    """The hits of what a search request carries (an image, several, a vector, or only marks), refined by
    the marks, several images combined as `combine` says (`mean` or `best`, SearchQuery)."""
    if not (like or unlike or combine == "best"):
        return await _search_one(request, service, params, crop)
    queries = await _request_queries(request, service, crop)
    if queries is not None and len(queries) > 1 and combine == "best":
        # each photo's offset + k nearest, merged: every item at its best score over the photos
        wide = dataclasses.replace(params, k=params.offset + params.k, offset=0)
        if like or unlike:
            found = await _search_refined(service, g, wide, list(queries), like, unlike)
        else:
            found = await anyio.to_thread.run_sync(service.search, queries, wide)
        from index import best_of   # when used (module docstring)

        return best_of(found, params.k, params.offset)
    if queries is None and not (like or unlike):   # no body and no marks: nothing to search with, said as
        return await _search_one(request, service, params, crop)   # any search without an image says it
    if queries is None:
        query = None
    else:
        query = _together(queries)[0] if len(queries) > 1 else queries[0]
    if not (like or unlike):
        return (await anyio.to_thread.run_sync(service.search, query[None], params))[0]
    return (await _search_refined(service, g, params, [query], like, unlike))[0]


async def _search_refined(service: Service, g: Gallery, params: SearchParams, queries: list[np.ndarray | None],
                          like: list[str], unlike: list[str], starts: list[str] = ()) -> list[list]:
    """The hits of each query vector (None: no query, the marks alone; or with `starts`, the stored vector of
    each of these items, one query each) moved towards the items `like` and away from the items `unlike`
    (index.refine_query), searched as params ask; no marked item, nor one of params.exclude, nor a query's own
    item (of `starts`) is among them. 422 naming a marked id the gallery does not hold, 404 naming the items of
    `starts` it does not hold."""
    from index import refine_queries   # when used (module docstring)

    def run():
        queries_of = queries
        if starts:
            queries_of = [item.vector for item in _stored(g, starts)]
        refined = refine_queries(g.store, queries_of, like, unlike) if like or unlike else np.stack(queries_of)
        # the service's search, so that filters, groups and the gallery checks apply as to any search
        left_out = params.exclude + tuple(like + unlike)
        if not starts:
            return service.search(refined, dataclasses.replace(params, exclude=left_out))
        # each query leaves out its own item: one search each (all in this one thread)
        return [service.search(query[None], dataclasses.replace(params, exclude=left_out + (start,)))[0]
                for start, query in zip(starts, refined)]

    try:
        return await anyio.to_thread.run_sync(run)
    except KeyError as exc:
        missing = exc.args[0]
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ApiError(422, "invalid_parameter", f"like/unlike: no item with id(s) {missing[:5]} in gallery "
                                                 f"{g.name!r}{more}") from None
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


def _stored(g: Gallery, ids: list[str]) -> list:
    """The stored items of these ids, in order; 404 naming those the gallery does not hold."""
    items = g.store.get_many(ids)
    missing = list(dict.fromkeys(id_ for id_, item in zip(ids, items) if item is None))
    if len(missing) == 1:
        raise ApiError(404, "not_found", f"no item with id {missing[0]!r} in the gallery")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ApiError(404, "not_found", f"no items with ids {missing[:5]} in the gallery{more}")
    return items


@router.post("/classify", response_model=ClassifyResponse, tags=["search"],
             summary="the label the gallery items nearest to an image agree on (classification by retrieval)",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_search_body())
async def classify(request: Request, q: Annotated[ClassifyQuery, Query()], after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, q.gallery)
    params = q.params(service, g.name)
    hits = await _search_request(request, service, g, params, q.region, [], [], q.combine)
    return JSONResponse({**_vote_dict(hits), "results": [_hit_dict(h) for h in hits], "k": params.k,
                         "took_ms": (time.perf_counter() - t0) * 1000, "model": service.model_id,
                         "reranked": False, "candidates": None})


@router.post("/batch/search", response_model=BatchSearchResponse, tags=["search"],
             summary="the k gallery items nearest to each of several images (or vectors), in one request",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_batch_search_body())
async def batch_search(request: Request, q: Annotated[BatchSearchQuery, Query()], after: str | None = _after()):
    # One request, one model call and one index call for up to SIMSEARCH_MAX_FILES_PER_REQUEST queries:
    # on a small machine most of a single search's cost is HTTP (docs/results/benchmarks.md).
    t0 = time.perf_counter()
    service, g = await _reading(request, after, q.gallery)
    params = q.params(service, g.name)
    region, like, unlike = q.region, q.like, q.unlike   # the same region of every image, marks for every query
    media_type = _media_type(request.headers.get("content-type", ""))
    if media_type == "application/json":
        _no_crop_for_vectors(region)
        queries = _batch_queries(await _read_body(request), service.embedder.dim,
                                 service.settings.max_files_per_request, service.model_id)
        if isinstance(queries, list):   # {"ids": [...]}: each item's neighbours, as POST /search/{id} gives them
            names: list[str | None] = [_check_id(id_) for id_ in queries]
            hits = await _search_refined(service, g, params, [None] * len(queries), like, unlike, starts=queries)
        elif like or unlike:
            names = [None] * len(queries)
            hits = await _search_refined(service, g, params, list(queries), like, unlike)
        else:
            names = [None] * len(queries)
            hits = await anyio.to_thread.run_sync(service.search, queries, params)
    else:
        if _is_raw_image(media_type):
            files, names = [("the body", await _read_body(request))], [None]
        else:
            form = await _read_form(request, {"file"})
            try:
                files = await _file_parts(form)
                names = [part.filename or None for part in form.getlist("file")]  # type: ignore[union-attr]
            finally:
                await form.close()
        # a corrupt file fails the request, naming it (as /embed and /index do): no partial answers
        if like or unlike:
            vectors, _ = await _embedded(service, files, region)
            hits = await _search_refined(service, g, params, list(vectors), like, unlike)
        else:
            _, hits = await _embedded(service, files, region, params)
    return JSONResponse({"queries": [{"name": n, **_results(found, params.group_by, params.offset),
                                      **({"vote": _vote_dict(found)} if q.vote else {})}
                                     for n, found in zip(names, hits)],
                         "k": params.k, "took_ms": (time.perf_counter() - t0) * 1000, "model": service.model_id,
                         "reranked": params.rerank is not None, "candidates": params.rerank, "offset": params.offset})


@router.post("/embed", response_model=EmbedResponse, tags=["search"],
             summary="the model's embedding of one or more images (nothing is stored)",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 413, 415, 422, 429, 503)},
             openapi_extra=_embed_body())
async def embed(request: Request, crop: str | None = _crop_param()):
    service = _service(request)
    region = _check_crop(crop)   # the same region of every image
    files = await _uploads(request, _media_type(request.headers.get("content-type", "")))
    # the same decoding and batching as a search, so a vector here is the one a search would use
    vectors, _ = await _embedded(service, files, region)
    return JSONResponse({"model": service.model_id, "dimension": service.embedder.dim,
                         "vectors": vectors.tolist()})


@router.post("/search/{id:path}", response_model=SearchResponse, tags=["search"],
             summary="the k gallery items nearest to an item already in the gallery (itself excluded)",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 422, 429, 503)})
async def search_by_id(request: Request, q: Annotated[SearchByIdQuery, Query()],
                       id: str = Path(description="gallery id"), after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, q.gallery)
    params = q.params(service, g.name)
    like, unlike = q.like, q.unlike
    if like or unlike or params.group_by or params.exclude or params.offset or params.rerank:   # as any query
        hits = (await _search_refined(service, g, params, [None], like, unlike, starts=[id]))[0]
        return _search_answer(service, hits, params, t0, q.vote)
    where_filter = json.loads(params.where) if params.where else None
    tuning = params.tuning()   # nprobe, ef_search, exact: {} for the gallery's own

    def run():
        t = time.perf_counter()
        hits = g.store.search_by_id(id, k=params.k, label=params.label, max_distance=params.max_distance,
                                    where=where_filter, **tuning)
        service.metrics.search_seconds.observe(time.perf_counter() - t)
        return hits

    from index import InvalidItemError   # when used (module docstring)

    try:
        hits = await anyio.to_thread.run_sync(run)
    except KeyError:
        raise ApiError(404, "not_found", f"no item with id {id!r} in the gallery") from None
    except InvalidItemError as exc:   # a parameter the gallery's index kind does not take, or beyond its lists
        raise ApiError(422, "invalid_parameter", f"gallery {g.name!r}: {exc}") from None
    return _search_answer(service, hits, params, t0, q.vote)
