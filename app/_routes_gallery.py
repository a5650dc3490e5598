"""The gallery routes: add items (POST /index: images, or vectors as JSON), list, get, change and delete them,
their thumbnails, the look-alikes (/duplicates), how items spread over values (/facets), and the named galleries.
CPU work (the model, FAISS, SQLite) runs in threads, never on the event loop. index (FAISS) is imported inside the
functions that use it: the service answers /healthz before FAISS and torch load."""
from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from typing import Any, Iterator

import anyio.to_thread
import numpy as np
from fastapi import Path, Query, Request, Response
from starlette.responses import JSONResponse

from model import Crop

from ._answers import POSITION_HEADER, _ERRORS, _item_out, _position, _write_refused
from ._bodies import (_checked_metadata, _file_parts, _index_body, _json, _media_type, _parse_metadata, _per_file,
                      _read_body, _read_form, _strings, _unit_vector, _vector_body)
from ._embedding import _check_whole_decode_budget, _prepare
from ._errors import ApiError
from ._openapi import declares
from ._params import (GROUPING_PATTERN, MAX_LABEL_CHARS, MAX_OFFSET, _WHERE_DOC, _after, _check_crop, _check_id,
                      _check_label, _check_where, _crop_param, _gallery, _no_crop_for_vectors, _reading, _router,
                      _service, _writing)
from ._schemas import (DeleteResponse, DuplicatesResponse, FacetsResponse, GalleriesResponse, GalleryDeleted,
                       GalleryOut, IndexInfo, IndexResponse, ItemOut, SkippedItem, UpdateResponse)
from ._service import GALLERY_NAME, Service

router = _router()

_NAME_DOC = "the gallery's name: 1 to 63 lower-case letters, digits, - and _, beginning with a letter or a digit"


@router.post("/index", status_code=201, response_model=IndexResponse, tags=["gallery"],
             summary="add (or replace, by id) one or more images, or vectors",
             responses={201: declares(POSITION_HEADER),
                        **{k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 507)}},
             openapi_extra=_index_body())
async def add(request: Request, gallery: str = _gallery(), crop: str | None = _crop_param(),
              skip_duplicates: float | None = Query(
                  None, gt=0, le=1, allow_inf_nan=False,
                  description="do not store a file (or a JSON item) whose cosine similarity with an item of another "
                              "id in the gallery (or one stored before it) is at least this; 0.98 catches copies "
                              "(re-encoded, resized), lower values look-alikes. The answer's `skipped` names each one "
                              "left out and its look-alike. Decided as the items are committed, so two requests "
                              "carrying the same new image at once store it once")):
    import index as index_pkg  # imported when used: the app answers /healthz before torch and FAISS load

    service = _service(request, write=True)
    region = _check_crop(crop)   # the same region of every image: embedded, and kept as its thumbnail
    if _media_type(request.headers.get("content-type", "")) == "application/json":
        _no_crop_for_vectors(region)
        items = _json_items(await _read_body(request), service)
    else:
        items = await _image_items(request, service, region)
    # once the request is known to be sound; a gallery that does not exist is made, unless the operator has
    # galleries made only on request (PUT /galleries/NAME), where a typo in the name would store items unseen
    g, made = await service.open_gallery(gallery, create=service.settings.create_galleries_on_write,
                                         by="POST /index (SIMSEARCH_CREATE_GALLERIES_ON_WRITE)")
    try:
        skipped = await g.commits.upsert(items, skip_duplicates)   # with the other requests waiting to commit
    except RuntimeError:   # its committer stopped: the gallery was just deleted or replaced, or the service is stopping
        raise ApiError(503, "index_unavailable", f"gallery {g.name!r} was closed while this request was under way "
                       "(deleted, replaced by a restore, or the service is stopping); nothing of it was stored",
                       {"Retry-After": "1"}) from None
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "rejected_by_index", str(exc)) from None
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    left_out = {d.position for d in skipped}
    stored = [it.id for pos, it in enumerate(items) if pos not in left_out]
    answer = IndexResponse(ids=stored, count=len(stored), skipped=[
        SkippedItem(file=d.position, id=d.id, duplicate_of=d.duplicate_of, score=d.score) for d in skipped],
        gallery_created=made)
    return JSONResponse(answer.model_dump(exclude=None if made else {"gallery_created"}), status_code=201,
                        headers=_position(g))


async def _image_items(request: Request, service: Service, region: Crop | None) -> list:
    """The items of a multipart POST /index: its `file` parts embedded (their region `region`) and thumbnailed,
    with their `id`, `label` and `metadata` parts; 4xx naming what is wrong."""
    import index as index_pkg  # when used (module docstring)

    form = await _read_form(request, {"file", "id", "label", "metadata"})
    try:
        files = await _file_parts(form)
        n = len(files)
        ids = [_check_id(v) for v in _per_file(_strings(form, "id"), n, "id", allow_one=False)
               if v is not None] or [uuid.uuid4().hex for _ in range(n)]
        if len(set(ids)) != n:
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ApiError(422, "invalid_id", f"the same id is given twice in one request: {dup}")
        labels = [_check_label(v) for v in _per_file(_strings(form, "label"), n, "label", allow_one=True)]
        metas = _strings(form, "metadata")
        metas = _per_file([_parse_metadata(t, i) for i, t in enumerate(metas)], n, "metadata", allow_one=True)
    finally:
        await form.close()
    sizes = _check_whole_decode_budget(service, files, write=True, crop=region)   # before any is decoded (h1 F5)
    # its images are decoded one after the other: the request holds its largest at once, out of the pixels all
    # requests' decodes may hold (SIMSEARCH_DECODE_PIXELS_IN_FLIGHT)
    async with service.decode_budget.hold(max(sizes, default=0)):
        arrays, thumbs = await anyio.to_thread.run_sync(_prepare, service, files, service.settings.thumbnail_size,
                                                        region, limiter=service.decode_limiter)
    vectors, _ = await service.batcher.submit(arrays)
    return [index_pkg.Item(id=i, vector=v, label=lb, metadata=m, thumbnail=t)
            for i, v, lb, m, t in zip(ids, vectors, labels, metas, thumbs)]


_JSON_ITEM_KEYS = frozenset({"id", "vector", "label", "metadata"})


def _json_items(body: bytes, service: Service) -> list:
    """The items of a JSON POST /index body, {"model": ..., "items": [{"id", "vector", "label", "metadata"},
    ...]}: each vector checked and made unit length as a JSON search vector is (no image, so no thumbnail), and
    its id, label and metadata as a form's; 422 naming the item and what is wrong, 409 for another model's
    vectors (mixed into the gallery, they would match nothing they look like), 413 for more items than a form
    may carry files."""
    import index as index_pkg  # when used (module docstring)

    given = _vector_body(body, "items", '[{"id": ..., "vector": [...], "label": ..., "metadata": {...}}, ...]',
                         service.model_id, model_required=True)["items"]
    if not isinstance(given, list) or not given:
        raise ApiError(422, "invalid_vector", "items must be a non-empty list of items, got "
                                              f"{json.dumps(given)[:60]}")
    cap = service.settings.max_files_per_request
    if len(given) > cap:
        raise ApiError(413, "too_many_vectors", f"{len(given)} items in one request; at most {cap}, as many as a "
                                                "form may carry files (SIMSEARCH_MAX_FILES_PER_REQUEST)")
    first_of: dict[str, int] = {}
    items = []
    for i, value in enumerate(given):
        with _naming(f"items[{i}]"):
            id_, vector, label, metadata = _json_item(value, service.embedder.dim)
        if id_ in first_of:
            raise ApiError(422, "invalid_id", f"items[{first_of[id_]}] and items[{i}] have the same id {id_!r}: "
                                              "the ids of one request must differ")
        if id_ is not None:
            first_of[id_] = i
        items.append(index_pkg.Item(id=id_ if id_ is not None else uuid.uuid4().hex, vector=vector, label=label,
                                    metadata=metadata))
    return items


def _json_item(value: Any, dim: int) -> tuple[str | None, np.ndarray, str | None, dict[str, Any] | None]:
    """One item of a JSON POST /index body, checked: (its id or None, its unit vector, label, metadata)."""
    if not isinstance(value, dict) or "vector" not in value or not value.keys() <= _JSON_ITEM_KEYS:
        got = f"keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
        raise ApiError(422, "invalid_vector", 'must be an object with "vector" and optionally "id", "label" and '
                                              f'"metadata", got {got}')
    vector = _unit_vector(value["vector"], dim, "vector")
    id_ = value.get("id")
    if id_ is not None and not isinstance(id_, str):
        raise ApiError(422, "invalid_id", f"id must be a string, got {json.dumps(id_)[:60]}")
    metadata = value.get("metadata")
    return (None if id_ is None else _check_id(id_), vector, _json_label(value.get("label")),
            None if metadata is None else _checked_metadata(metadata, "metadata"))


def _json_label(value: Any) -> str | None:
    """A label given in JSON: a string (checked as a form's label part is; "" is none) or null."""
    if value is not None and not isinstance(value, str):
        raise ApiError(422, "invalid_label", f"label must be a string or null, got {json.dumps(value)[:60]}")
    return _check_label(value)


@contextlib.contextmanager
def _naming(what: str) -> Iterator[None]:
    """An ApiError raised inside says first which part of the request it is about (`items[3]: ...`)."""
    try:
        yield
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"{what}: {exc.message}", exc.headers) from None


@router.get("/index", response_model=IndexInfo, tags=["gallery"],
            summary="gallery size, dimension, model, index kind, and a page of the listing",
            responses={200: declares(POSITION_HEADER),
                       **{k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)}})
async def info(request: Request,
               offset: int = Query(0, ge=0, le=MAX_OFFSET,
                                   description="items to skip (after `after`, when given). Unstable under writes: a "
                                               "delete before the offset moves an item back across it, which the next "
                                               "page then skips; to export, page with `after`"),
               limit: int = Query(100, ge=0, le=1000,
                                  description="items in the page; 0 lists none: the counts alone (`count`, and "
                                              "`matching` with `label` or `where`), with no next page"),
               after_item: int | None = Query(None, alias="after", ge=0, le=2**63 - 1,
                                              description="list only the items after this listing position: the "
                                                          "`next_after` of the page before (keyset paging, stable "
                                                          "under writes; an item replaced since comes again, later)"),
               label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="list only this label"),
               where: str | None = Query(None, max_length=4096, description=_WHERE_DOC.replace("neighbours", "items")),
               vector: bool = Query(False, description="include each item's stored vector (to export the gallery)"),
               gallery: str = _gallery(), after: str | None = _after()):
    service, g = await _reading(request, after, gallery)
    label, where = _check_label(label), _check_where(where)
    where_filter = json.loads(where) if where else None

    def run():
        position = g.store.position()   # first: the listing is at least this new
        matching = g.store.count(label, where_filter) if label or where_filter else None
        if not limit:   # counting: nothing to read, and no page after this one (it would be this one again)
            return position, g.store.info(), matching, []
        return position, g.store.info(), matching, g.store.list_positions(offset=offset, limit=limit + 1, label=label,
                                                                          where=where_filter, after=after_item)

    position, store_info, matching, listed = await anyio.to_thread.run_sync(run)
    more = len(listed) > limit
    items = [it for _, it in listed]
    listing = IndexInfo(count=int(store_info.get("count", 0)), matching=matching, dimension=service.embedder.dim,
                        model=service.model_id,
                        index=str(store_info.get("index")),
                        index_kind=store_info.get("index_kind"),
                        items=[_item_out(it, vector) for it in items[:limit]],
                        offset=offset, limit=limit, next_offset=offset + limit if more else None,
                        after=after_item, next_after=listed[limit - 1][0] if more else None,
                        read_only=service.settings.read_only, position=position, gallery=g.name)
    return JSONResponse(listing.model_dump(exclude=None if vector else {"items": {"__all__": {"vector"}}}),
                        headers={POSITION_HEADER: position})


@router.get("/duplicates", response_model=DuplicatesResponse, tags=["gallery"],
            summary="pairs of gallery items that look alike (copies, near-copies, one picture under two labels), "
                    "the most alike first",
            responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)})
async def duplicates(request: Request,
                     min_score: float = Query(0.98, gt=0, le=1, allow_inf_nan=False,
                                              description="cosine at which two items count as alike: 0.98 catches "
                                                          "copies (re-encoded, resized), lower values look-alikes"),
                     k: int = Query(5, ge=1, le=100, description="nearest items looked at for each item"),
                     conflicts: bool = Query(False, description="only pairs whose labels differ"),
                     limit: int = Query(100, ge=1, le=10_000, description="most pairs in the answer"),
                     gallery: str = _gallery(), after: str | None = _after()):
    import index as index_pkg  # when used (module docstring)

    service, g = await _reading(request, after, gallery)
    cap = service.settings.max_duplicates_items
    count = await anyio.to_thread.run_sync(g.store.count)
    if cap and count > cap:
        raise ApiError(422, "gallery_too_large", f"gallery {g.name!r} holds {count} items; this service looks for "
                                                 f"look-alikes in galleries of at most {cap} "
                                                 "(SIMSEARCH_MAX_DUPLICATES_ITEMS): run `simsearch index duplicates` "
                                                 "beside it, which reads the same gallery")
    items, pairs = await anyio.to_thread.run_sync(lambda: index_pkg.find_duplicates(g.store, min_score, k))
    shown = [p for p in pairs if p["labels_differ"]] if conflicts else pairs
    return JSONResponse({"items": items, "min_score": min_score, "k": k, "pairs_found": len(pairs),
                         "labels_differ": sum(p["labels_differ"] for p in pairs), "pairs": shown[:limit],
                         "truncated": len(shown) > limit, "gallery": g.name})


@router.get("/facets", response_model=FacetsResponse, tags=["gallery"],
            summary="how the items that match the filters spread over a label's or a metadata key's values, "
                    "the most common first",
            responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)})
async def facets(request: Request,
                 field: str = Query(max_length=MAX_LABEL_CHARS + 9, json_schema_extra={"pattern": GROUPING_PATTERN},
                                    description="`label`, or `metadata.KEY` for a top-level key of the items' "
                                                "metadata (e.g. metadata.album)"),
                 label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="only items with this label"),
                 where: str | None = Query(None, max_length=4096, description="only items matching this metadata "
                                                                              "filter; " + _WHERE_DOC),
                 limit: int = Query(100, ge=1, le=1000, description="most values in the answer"),
                 gallery: str = _gallery(), after: str | None = _after()):
    from index import check_group_by   # when used (module docstring)

    _, g = await _reading(request, after, gallery)
    try:
        check_group_by(field, "field")
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None
    label, where = _check_label(label), _check_where(where)
    where_filter = json.loads(where) if where else None
    found = await anyio.to_thread.run_sync(lambda: g.store.facets(field, label, where_filter))
    shown = found.values[:limit]
    return JSONResponse({"field": field, "items": found.items,
                         "values": [{"value": v, "count": n} for v, n in shown], "distinct": len(found.values),
                         "others": sum(n for _, n in found.values[limit:]), "missing": found.missing,
                         "not_scalar": found.not_scalar, "gallery": g.name})


# what a thumbnail answer (200 or 304) carries besides the headers of every answer (app/_openapi.py)
_THUMBNAIL_HEADERS = {
    "ETag": {"required": True, "schema": {"type": "string"},
             "description": "the thumbnail's entity tag: send it back as If-None-Match for a 304 while it is the same"},
    "Cache-Control": {"required": True, "schema": {"type": "string", "enum": ["private, no-cache"]},
                      "description": "ask again each time (If-None-Match makes it a 304 without the image): an image "
                                     "replaced under the id shows at once"},
}


@router.get("/index/{id:path}/thumbnail", tags=["gallery"], summary="the item's stored JPEG thumbnail",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}, "headers": _THUMBNAIL_HEADERS},
                                                304: {"description": "If-None-Match names the thumbnail's ETag: "
                                                                     "unchanged", "headers": _THUMBNAIL_HEADERS},
                                                **{k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)}})
async def thumbnail(request: Request, id: str = Path(), gallery: str = _gallery(),
                    after: str | None = _after()) -> Response:
    _, g = await _reading(request, after, gallery)
    data = await anyio.to_thread.run_sync(g.store.thumbnail, id)
    if not data:
        raise ApiError(404, "not_found", f"no thumbnail for id {id!r} (no such item, or stored without one)")
    # no-cache: a browser asks again each time, and If-None-Match makes that a 304 without the image while it is
    # the same; an image replaced under the id (POST /index again) shows at once, where max-age=60 showed the old
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "private, no-cache", "ETag": etag}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2, weak comparison) names this entity tag, or is `*`."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


@router.get("/index/{id:path}", response_model=ItemOut, tags=["gallery"], summary="one gallery item",
            responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)})
async def get_item(request: Request, id: str = Path(),
                   vector: bool = Query(False, description="include the stored vector"), gallery: str = _gallery(),
                   after: str | None = _after()):
    _, g = await _reading(request, after, gallery)
    item = await anyio.to_thread.run_sync(g.store.get, id)
    if item is None:
        raise ApiError(404, "not_found", f"no item with id {id!r} in the gallery")
    return JSONResponse(_item_out(item, vector).model_dump(exclude=None if vector else {"vector"}))


@router.delete("/index", response_model=DeleteResponse, tags=["gallery"],
               summary="remove every gallery item that matches a label and/or a metadata filter",
               responses={200: declares(POSITION_HEADER),
                          **{k: _ERRORS[k] for k in (401, 403, 404, 409, 422, 429, 503, 507)}})
async def delete_matching(request: Request,
                          label: str | None = Query(None, max_length=MAX_LABEL_CHARS,
                                                    description="items with this label"),
                          where: str | None = Query(None, max_length=4096,
                                                    description=_WHERE_DOC.replace("neighbours", "items")),
                          gallery: str = _gallery()):
    import index as index_pkg  # when used (module docstring)

    service, g = await _writing(request, gallery)
    label, where = _check_label(label), _check_where(where)
    if label is None and where is None:
        raise ApiError(422, "invalid_parameter", "DELETE /index needs label or where (it never empties the gallery; "
                                                 "GET /index with the same parameters shows what would go)")
    try:
        gone = await anyio.to_thread.run_sync(g.store.delete_where, label, json.loads(where) if where else None)
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    return JSONResponse(DeleteResponse(deleted=len(gone)).model_dump(), headers=_position(g))


# The body of PATCH /index/{id} and PATCH /index, as both take it
_PATCH_BODY = {"requestBody": {"required": True, "content": {t: {"schema": {
    "type": "object", "additionalProperties": False, "minProperties": 1,   # {}: a 422, nothing to change
    "properties": {"label": {"type": ["string", "null"], "description": "the new label; null removes it"},
                   "metadata": {"type": "object", "description": "a JSON merge patch (RFC 7396): "
                                "each key given is set, a key given as null is removed"}}}}
    for t in ("application/json", "application/merge-patch+json")}}}


async def _patch_body(request: Request) -> dict[str, Any]:
    """The changes a PATCH body asks for: {"label": ..., "metadata_patch": ...} (each when given), checked;
    415 for a body that is not JSON, 422 naming what is wrong."""
    media_type = _media_type(request.headers.get("content-type", ""))
    if media_type not in ("application/json", "application/merge-patch+json"):
        raise ApiError(415, "unsupported_media_type", f"expected a JSON body (application/json), got Content-Type "
                                                      f"{media_type or 'none'!r}")
    body = _json(await _read_body(request), "invalid_metadata", "the body")
    if not isinstance(body, dict) or not body or set(body) - {"label", "metadata"}:
        got = (sorted(body) if body else "{} (nothing to change)") if isinstance(body, dict) else type(body).__name__
        raise ApiError(422, "invalid_metadata", f'the body must be an object with "label" and/or "metadata", got {got}')
    changes: dict[str, Any] = {}
    if "label" in body:
        changes["label"] = _json_label(body["label"])
    if "metadata" in body:
        if not isinstance(body["metadata"], dict):
            raise ApiError(422, "invalid_metadata", "metadata must be a JSON object (a merge patch: null removes a "
                                                    f"key), got {json.dumps(body['metadata'])[:60]}")
        changes["metadata_patch"] = body["metadata"]
    return changes


@router.patch("/index", response_model=UpdateResponse, tags=["gallery"],
              summary="change the label and/or metadata of every gallery item that matches a label and/or a metadata "
                      "filter, keeping their images, vectors and places",
              responses={200: declares(POSITION_HEADER),
                         **{k: _ERRORS[k] for k in (401, 403, 404, 409, 413, 415, 422, 429, 503, 507)}},
              openapi_extra=_PATCH_BODY)
async def update_matching(request: Request,
                          label: str | None = Query(None, max_length=MAX_LABEL_CHARS,
                                                    description="items with this label"),
                          where: str | None = Query(None, max_length=4096,
                                                    description=_WHERE_DOC.replace("neighbours", "items")),
                          gallery: str = _gallery()) -> JSONResponse:
    import index as index_pkg  # when used (module docstring)

    service, g = await _writing(request, gallery)
    label, where = _check_label(label), _check_where(where)
    if label is None and where is None:
        raise ApiError(422, "invalid_parameter", "PATCH /index needs label or where: it changes only the items they "
                                                 "select (GET /index with the same parameters lists them); to change "
                                                 "one item, PATCH /index/{id}")
    changes = await _patch_body(request)
    if "label" in changes:
        changes["new_label"] = changes.pop("label")
    where_filter = json.loads(where) if where else None
    try:
        changed = await anyio.to_thread.run_sync(lambda: g.store.update_where(label, where_filter, **changes))
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_metadata", str(exc)) from None
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    return JSONResponse(UpdateResponse(updated=len(changed)).model_dump(), headers=_position(g))


@router.patch("/index/{id:path}", response_model=ItemOut, tags=["gallery"],
              summary="change an item's label and/or metadata, keeping its image, vector and place",
              responses={200: declares(POSITION_HEADER),
                         **{k: _ERRORS[k] for k in (401, 403, 404, 409, 413, 415, 422, 429, 503, 507)}},
              openapi_extra=_PATCH_BODY)
async def update_item(request: Request, id: str = Path(), gallery: str = _gallery()) -> JSONResponse:
    import index as index_pkg  # when used (module docstring)

    service, g = await _writing(request, gallery)
    id = _check_id(id)
    changes = await _patch_body(request)
    try:
        item = await anyio.to_thread.run_sync(lambda: g.store.update(id, **changes))
    except KeyError:
        raise ApiError(404, "not_found", f"no item with id {id!r} in the gallery") from None
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_metadata", str(exc)) from None
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    return JSONResponse(_item_out(item, False).model_dump(exclude={"vector"}), headers=_position(g))


@router.delete("/index/{id:path}", status_code=204, tags=["gallery"], summary="remove a gallery item",
               responses={204: declares(POSITION_HEADER),
                          **{k: _ERRORS[k] for k in (401, 403, 404, 409, 422, 429, 503, 507)}}, response_class=Response)
async def delete_item(request: Request, id: str = Path(), gallery: str = _gallery()) -> Response:
    import index as index_pkg  # when used (module docstring)

    service, g = await _writing(request, gallery)
    try:
        deleted = await anyio.to_thread.run_sync(g.store.delete, [id])
    except index_pkg.InvalidItemError:  # an id no item can have (too long, say): as absent as any other
        deleted = []
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    if id not in deleted:
        raise ApiError(404, "not_found", f"no item with id {id!r} in the gallery")
    return Response(status_code=204, headers=_position(g))


@router.get("/galleries", response_model=GalleriesResponse, tags=["gallery"],
            summary="the galleries: the default one and the named ones, with their sizes",
            responses={k: _ERRORS[k] for k in (401, 403, 429, 503)})
async def galleries(request: Request):
    service = _service(request)
    rows = await anyio.to_thread.run_sync(service.galleries_listed)
    listed = [GalleryOut(name=name, count=count, open=is_open) for name, count, is_open in rows]
    return JSONResponse(GalleriesResponse(galleries=listed, max_galleries=service.settings.max_galleries).model_dump())


@router.put("/galleries/{name}", status_code=201, response_model=GalleryOut, tags=["gallery"],
            summary="make a named gallery (empty), or find it there already: 201 when made, 200 when it existed",
            responses={200: {"model": GalleryOut, "description": "the gallery existed already (made before, or the "
                                                                 "default one): nothing changed"},
                       201: {"description": "the gallery was made, empty"},
                       **{k: _ERRORS[k] for k in (401, 403, 409, 422, 429, 503, 507)}})
async def make_gallery(request: Request, name: str = Path(pattern=GALLERY_NAME, description=_NAME_DOC)):
    service = _service(request, write=True)
    g, made = await service.open_gallery(name, create=True, by=f"PUT /galleries/{name}")
    count = await anyio.to_thread.run_sync(g.store.count)
    return JSONResponse(GalleryOut(name=g.name, count=count, open=True).model_dump(), status_code=201 if made else 200)


@router.delete("/galleries/{name}", response_model=GalleryDeleted, tags=["gallery"],
               summary="delete a named gallery: its items, its index and its folder",
               responses={k: _ERRORS[k] for k in (401, 403, 404, 422, 429, 503)})
async def delete_gallery(request: Request, name: str = Path(pattern=GALLERY_NAME)):
    service = _service(request, write=True)
    deleted = await service.drop_gallery(name)
    return JSONResponse(GalleryDeleted(name=name, deleted=deleted).model_dump())
