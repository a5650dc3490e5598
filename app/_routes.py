"""The HTTP routes. CPU work (decoding, the model, FAISS, SQLite) runs in threads, never on the
event loop; the body is parsed here (not by FastAPI params) so the multipart limits apply."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import unicodedata
import uuid
from pathlib import Path as FsPath
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from starlette.requests import ClientDisconnect
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import FileResponse, JSONResponse

from model import Crop, draft_size, make_thumbnail, parse_crop

from ._batcher import SearchParams
from ._errors import REQUEST_ID, ApiError, error_response
from ._images import decode_image, slow_to_decode, whole_decode_pixels
from ._schemas import (BatchSearchResponse, ClassifyResponse, DeleteResponse, DuplicatesResponse, EmbedResponse,
                       FacetsResponse,
                       ErrorResponse, GalleriesResponse, GalleryDeleted, GalleryOut, IndexInfo, IndexResponse, ItemOut,
                       SearchResponse, SkippedItem)
from ._service import DEFAULT_GALLERY, GALLERY_NAME, Gallery, Service
from ._settings import Settings

log = logging.getLogger("simsearch.app")

STATIC_DIR = FsPath(__file__).resolve().parent / "static"
MAX_ID_CHARS = 1024   # the store's limit
MAX_LABEL_CHARS = 256
MAX_OFFSET = 2**62   # the store's limit: offset + limit must fit SQLite's 64-bit integers
# Read-your-writes across replicas: every write answers with the gallery's position after it, and a read
# that sends it back is answered from a state at least that new (docs/service.md, "Reading your own writes").
POSITION_HEADER = "X-Simsearch-Position"
AFTER_HEADER = "X-Simsearch-After"


def _declared_query(dependant) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared_query(sub)
    return frozenset(names)


async def _known_query_only(request: Request) -> None:
    """422 for a query parameter the endpoint does not take: a misspelt `lable=cat` or a `rerank` where
    there is none would otherwise be ignored, and the answer would look right."""
    route = request.scope.get("route")
    if route is None or not request.scope.get("query_string") or not route.include_in_schema:
        return   # the page's own address carries what its script reads (?gallery=NAME), and a browser's extras
    known = getattr(route, "_simsearch_query", None)   # found once a route (routes are not hashable)
    if known is None:
        known = route._simsearch_query = _declared_query(route.dependant)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ApiError(422, "invalid_parameter", f"{request.method} {route.path_format} takes no query parameter "
                       f"{', '.join(map(repr, unknown))}; it takes: {takes}")


router = APIRouter(dependencies=[Depends(_known_query_only)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "a file part is missing, empty, corrupt or truncated; malformed multipart; a malformed X-Simsearch-After",
        401: "the API key is missing", 403: "the API key is wrong",
        413: "the body, a field, the number of parts or the image's pixel count is over a limit",
        415: "not a JPEG, PNG, WebP, GIF, BMP, AVIF or HEIC image (decided from the bytes)",
        404: "no item with this id; no gallery of that name",
        409: "X-Simsearch-After names a position this gallery never had; a JSON vector's `model` is not this service's",
        422: "a parameter, id, label or metadata is invalid", 429: "rate limited",
        503: "not ready, or over the concurrency limit; for a write, the index cannot take writes",
        507: "the service's disk is full: the write was not stored"}.items()}


def _multipart(description: str, fields: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": fields, "required": ["file"]}
    return {"requestBody": {"required": True, "description": description,
                            "content": {"multipart/form-data": {"schema": schema}}}}


_MODEL_FIELD = {"type": "string", "description": "optional: the model that made the vector (name@sha12, as /readyz, "
                                                "every answer and an exported ONNX file's simsearch.model_id "
                                                "give it); another model's vector is refused with 409"}


def _search_body() -> dict[str, Any]:
    spec = _multipart("one image: a multipart `file` part, or the image itself as the body; or several photos of "
                      "what is wanted, a `file` part each, searched as one query (combine=); or a vector, "
                      'as JSON {"vector": [...]} (a vector from POST /embed or GET /index/{id}?vector=true)',
                      {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}})
    binary = {"schema": {"type": "string", "format": "binary"}}
    spec["requestBody"]["content"].update({t: binary for t in _RAW_IMAGE_TYPES})
    spec["requestBody"]["content"]["application/json"] = {"schema": {
        "type": "object", "required": ["vector"], "additionalProperties": False,
        "properties": {"vector": {"type": "array", "items": {"type": "number"},
                                  "description": "the model's dimension; normalised to unit length"},
                       "model": _MODEL_FIELD}}}
    return spec


def _batch_search_body() -> dict[str, Any]:
    spec = _embed_body()
    spec["requestBody"]["description"] = ("the query images as multipart `file` parts (or one image itself as "
                                          'the body); or query vectors, as JSON {"vectors": [[...], ...]}')
    spec["requestBody"]["content"]["application/json"] = {"schema": {
        "type": "object", "required": ["vectors"], "additionalProperties": False,
        "properties": {"vectors": {"type": "array", "minItems": 1, "items": {
            "type": "array", "items": {"type": "number"},
            "description": "the model's dimension; normalised to unit length"}},
            "model": _MODEL_FIELD}}}
    return spec


def _embed_body() -> dict[str, Any]:
    spec = _search_body()
    spec["requestBody"]["description"] = "one or more multipart `file` parts, or one image itself as the body"
    del spec["requestBody"]["content"]["application/json"]   # POST /embed takes images only (a vector is one already)
    form = spec["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    form["file"] = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return spec


def _service(request: Request, write: bool = False) -> Service:
    """The ready service (503 until it is); for a write, 405 when it serves its index read-only."""
    service: Service = request.app.state.service
    service.require_ready()
    if write and service.settings.read_only:
        raise _read_only()
    return service


def _after() -> Any:
    # no max_length: a position too long to be one is a 400 invalid_position like any malformed one
    return Header(None, alias=AFTER_HEADER,
                  description="answer from a state of the gallery at least as new as this position (the "
                              f"{POSITION_HEADER} a write answered): read-your-writes on a read-only replica, "
                              "which applies the writer's changes first when it is behind. Opaque: two whole numbers "
                              "joined by a dot (the last write's sequence number, the edit count), each of which only "
                              "grows: to keep the newest of several, compare them as pairs of integers, never as "
                              "decimals (1.10 is after 1.9). Empty: as if not sent",
                  examples=["1042.7"])


def _gallery() -> Any:
    return Query(DEFAULT_GALLERY, min_length=1, max_length=63, pattern=GALLERY_NAME,
                 description="which gallery: `default` (the service's first, in DATA/index) or a named one "
                             "(lower-case letters, digits, - and _), which the first POST /index to it makes")


async def _reading(request: Request, after: str | None, gallery: str) -> tuple[Service, Gallery]:
    """The ready service and the gallery a read asks for (404 when there is none of that name), caught
    up to X-Simsearch-After when it is sent."""
    service = _service(request)
    g = await service.gallery(gallery)
    if after is not None and after.strip():   # empty: as if not sent (fetch's `{[AFTER_HEADER]: pos ?? ''}`)
        await service.catch_up(g, after.strip())
    return service, g


async def _writing(request: Request, gallery: str, create: bool = False) -> tuple[Service, Gallery]:
    """The ready service (405 when read-only) and the gallery a write is for; `create` makes it."""
    service = _service(request, write=True)
    return service, await service.gallery(gallery, create=create)


class _FieldNotUtf8(MultiPartException):
    def __init__(self, field: str, at: int, byte: int):
        super().__init__(f"form field {field!r} is not UTF-8")
        self.field, self.at, self.byte = field, at, byte


class _Utf8FormParser(MultiPartParser):
    """Starlette's multipart parser, except that a text field (a part without a filename) that is not UTF-8 is
    refused: Starlette reads it as Latin-1 instead, so a label or an id sent in another encoding was stored as
    other characters without a word."""

    def on_part_end(self) -> None:
        part = getattr(self, "_current_part", None)
        if part is not None and part.file is None and getattr(self, "_charset", "utf-8") == "utf-8":
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _FieldNotUtf8(part.field_name, exc.start, part.data[exc.start]) from None
        super().on_part_end()


def _position(g: Gallery) -> dict[str, str]:
    """The header that tells a client where the gallery stands after its write."""
    return {POSITION_HEADER: g.store.position()}


def _read_only() -> ApiError:
    return ApiError(405, "read_only", "this service serves its index read-only (SIMSEARCH_READ_ONLY): add, "
                                      "change and delete items through the service that owns the index",
                    {"Allow": "GET, HEAD"})   # what a read-only service does on the paths that write


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _write_refused(exc: Exception, service: Service) -> ApiError:
    """The answer to a write the store did not make (it changed nothing). A disk that is full or
    failing is the operator's to fix: its path and free space go to the log (the first of a run of
    refusals, then a count a minute: service.refusals), not to the client."""
    import index as index_pkg

    if isinstance(exc, index_pkg.ReadOnlyError):
        return _read_only()
    if not isinstance(exc, index_pkg.StorageError):  # closed while shutting down
        return ApiError(503, "index_unavailable", f"the index cannot take writes: {exc}", {"Retry-After": "5"})
    if service.refusals.refused(exc.full):
        log.error("write refused by the disk (request %s): %s", REQUEST_ID.get(), exc)
    if exc.full:
        return ApiError(507, "insufficient_storage", "the service's disk is full: this write was not stored and "
                        "changed nothing; searches still work. Retry once the operator has freed space")
    return ApiError(503, "index_unavailable", "the service's disk refused this write: it was not stored and "
                    "changed nothing; searches still work", {"Retry-After": "30"})


# ---- body parsing ------------------------------------------------------------------------------

# A body with one of these types is the image itself (`curl --data-binary @photo.jpg`); the format
# is still decided from the bytes, never from the type.
_RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream")


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def _json(text: str | bytes, code: str, what: str) -> Any:
    """Strict JSON (no NaN or Infinity); a 422 with `code` saying that `what` is not valid JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, code, f"{what} is not valid JSON: {exc}") from None


def _vector_body(body: bytes, key: str, shape: str, model_id: str) -> dict:
    """A JSON search body: an object with `key` and optionally `model`, which must be this service's
    model (vectors of two models cannot be compared); 422 or 409 naming what is wrong."""
    value = _json(body, "invalid_vector", "the body")
    if not isinstance(value, dict) or key not in value or not set(value) <= {key, "model"}:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ApiError(422, "invalid_vector", f'the JSON body must be {{"{key}": {shape}}}, with an optional '
                                              f'"model", and nothing else; got {got}')
    model = value.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "invalid_vector", f"model must be a string (name@sha12), got {type(model).__name__}")
    if model is not None and model != model_id:
        raise ApiError(409, "model_mismatch", f"the vectors were made by model {model!r}; this service embeds with "
                                              f"{model_id!r}, and another model's vectors cannot be compared with "
                                              "its gallery (export this service's model: simsearch model-export)")
    return value


def _query_vector(body: bytes, dim: int, model_id: str) -> np.ndarray:
    """The `vector` of a JSON search body, as a (1, dim) float32 array; 422 naming what is wrong."""
    value = _vector_body(body, "vector", "[...]", model_id)
    return _unit_vector(value["vector"], dim, "vector")[None]


def _query_vectors(body: bytes, dim: int, max_count: int, model_id: str) -> np.ndarray:
    """The `vectors` of a JSON batch search body, as an (n, dim) float32 array; 422 (413 for too many)
    naming the vector that is wrong."""
    value = _vector_body(body, "vectors", "[[...], ...]", model_id)
    vectors = value["vectors"]
    if not isinstance(vectors, list) or not vectors:
        raise ApiError(422, "invalid_vector", "vectors must be a non-empty list of vectors")
    if len(vectors) > max_count:
        raise ApiError(413, "too_many_vectors", f"{len(vectors)} vectors in one request; at most {max_count} "
                                                "(SIMSEARCH_MAX_FILES_PER_REQUEST)")
    return np.stack([_unit_vector(v, dim, f"vectors[{i}]") for i, v in enumerate(vectors)])


def _unit_vector(vec: Any, dim: int, what: str) -> np.ndarray:
    if not isinstance(vec, list) or len(vec) != dim:
        shape = f"a list of {len(vec)} values" if isinstance(vec, list) else type(vec).__name__
        raise ApiError(422, "invalid_vector", f"{what} must be a list of {dim} numbers (the model's dimension), "
                                              f"got {shape}")
    for i, x in enumerate(vec):
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise ApiError(422, "invalid_vector", f"{what}[{i}] must be a number, got {json.dumps(x)[:40]}")
    arr = np.asarray(vec, dtype=np.float64)
    scale = np.abs(arr).max()  # divided out first, so that no square overflows
    if not np.isfinite(scale) or scale == 0:
        raise ApiError(422, "invalid_vector", f"{what} must have a finite, non-zero length")
    arr /= scale
    return (arr / np.linalg.norm(arr)).astype(np.float32)


def _is_raw_image(media_type: str) -> bool:
    return media_type in _RAW_IMAGE_TYPES or media_type.startswith("image/")


async def _read_body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before sending the whole body") from None


async def _read_form(request: Request, allowed: set[str]) -> FormData:
    """Parse a multipart body with the part-count and field-size limits of the settings."""
    s = _settings(request)
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("application/x-www-form-urlencoded"):
        raise ApiError(400, "missing_file", "no `file` part: a urlencoded form cannot carry files; "
                                            "send multipart/form-data with the image as a part named `file`")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type",
                       f"expected a multipart/form-data body with a `file` part, got Content-Type {ctype or 'none'!r}"
                       + (" (or the image itself as the body, with Content-Type image/jpeg, image/png, ... or "
                          "application/octet-stream; or a vector as an application/json body)"
                          if request.url.path.rstrip("/").endswith("/search") else ""))
    parser = _Utf8FormParser(request.headers, request.stream(), max_files=s.max_files_per_request,
                             max_fields=s.max_fields_per_request, max_part_size=s.max_field_bytes)
    try:
        form = await parser.parse()
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before sending the whole body") from None
    except _FieldNotUtf8 as exc:
        raise ApiError(422, "invalid_field", f"form field {exc.field!r} is not UTF-8 text (byte {exc.at} is "
                                             f"0x{exc.byte:02x}); send text fields in UTF-8") from None
    except MultiPartException as exc:
        msg = exc.message
        if msg.startswith("Too many files"):
            raise ApiError(413, "too_many_parts", f"more than {s.max_files_per_request} `file` parts") from None
        if msg.startswith("Too many fields"):
            raise ApiError(413, "too_many_parts", f"more than {s.max_fields_per_request} non-file fields") from None
        if "exceeded maximum size" in msg:
            raise ApiError(413, "field_too_large",
                           f"a non-file field is larger than the limit of {s.max_field_bytes} bytes") from None
        raise ApiError(400, "malformed_multipart", f"the multipart body is malformed: {msg}") from None
    unknown = sorted({name for name in form.keys() if name not in allowed})
    if unknown:
        await form.close()
        raise ApiError(422, "unknown_field", f"unknown form field(s) {unknown}; this route accepts {sorted(allowed)}")
    return form


async def _uploads(request: Request, media_type: str) -> list[tuple[str, bytes]]:
    """The images of a search or embed request: the body itself (an image media type), or its `file` parts."""
    if _is_raw_image(media_type):
        return [("the body", await _read_body(request))]
    form = await _read_form(request, {"file"})
    try:
        return await _file_parts(form)
    finally:
        await form.close()


async def _file_parts(form: FormData) -> list[tuple[str, bytes]]:
    files = form.getlist("file")
    if not files:
        raise ApiError(400, "missing_file", "no `file` part in the form; send the image as a file part named `file`")
    out = []
    for i, part in enumerate(files):
        if not isinstance(part, UploadFile):
            raise ApiError(400, "missing_file",
                           f"`file` part {i} is a plain field, not a file upload (give it a filename)")
        out.append((f"file {i} ({part.filename!r})" if part.filename else f"file {i}", await part.read()))
    return out


def _strings(form: FormData, name: str) -> list[str]:
    values = form.getlist(name)
    for v in values:
        if not isinstance(v, str):
            raise ApiError(422, f"invalid_{name}", f"`{name}` must be a text field, not a file upload")
    return values  # type: ignore[return-value]


def _per_file(values: list[Any], n: int, name: str, allow_one: bool) -> list[Any]:
    if not values:
        return [None] * n
    if len(values) == n:
        return values
    if allow_one and len(values) == 1:
        return values * n
    expected = f"1 or {n}" if allow_one and n > 1 else f"{n}"
    raise ApiError(422, f"invalid_{name}", f"got {len(values)} `{name}` parts for {n} files; send {expected} (or none)")


# Text direction overrides and isolates: "rtl\u202egpj.exe" shows as "rtlexe.jpg"
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _has_control(text: str) -> bool:
    """A control character (C0, DEL, C1 such as U+0085), a line or paragraph separator (U+2028, U+2029),
    a lone surrogate (not text: no answer could carry it) or a text direction override: what would break a
    log line, a CSV row, a header or a JSON answer that carries the text, or make it show as other text."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") or c in _BIDI_CONTROLS for c in text)


def _check_id(value: str) -> str:
    # '/' is allowed (`simsearch index build` uses relative paths as ids); the id routes take it. A '.' or '..'
    # between slashes is not: curl, browsers and HTTP libraries resolve it away in /index/{id}, so such an item
    # could be stored but never fetched, edited or deleted by its id.
    if (not value or len(value) > MAX_ID_CHARS or value != value.strip() or value.endswith("/thumbnail")
            or _has_control(value)
            or any(segment in (".", "..") for segment in value.split("/"))):
        raise ApiError(422, "invalid_id", f"id {value[:80]!r} is not valid: 1-{MAX_ID_CHARS} characters, no control "
                                          "characters, no surrounding spaces, no '.' or '..' between slashes, not "
                                          "ending in '/thumbnail'")
    return value


def _check_label(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_LABEL_CHARS or _has_control(value):
        raise ApiError(422, "invalid_label", f"label {value[:40]!r} is not valid: at most {MAX_LABEL_CHARS} "
                                             "characters, no control characters")
    return value


_WHERE_DOC = ('only neighbours whose metadata matches: a JSON object of keys and values (strings, numbers, '
              'true, false, null), or of keys and operators ($eq $ne $in $nin $exists $gt $gte $lt $lte), and '
              '$or / $and of such objects, e.g. {"source": "phone", "year": {"$gte": 2020}} (URL-encoded)')


def _check_where(text: str | None) -> str | None:
    """The `where` query parameter as canonical JSON (keys sorted), or None; 422 naming what is wrong."""
    if text is None or text == "":
        return None
    value = _json(text, "invalid_parameter", f"where={text[:80]!r}")
    import index as index_pkg  # see add()

    if value is None:   # JSON null is no filter to the store; as a parameter it is a mistake, said as one
        raise ApiError(422, "invalid_parameter", 'where=null: give a non-empty JSON object of metadata keys and '
                                                 'values, e.g. {"source": "phone"}, or leave where out')
    try:
        index_pkg.check_where(value)
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None
    return json.dumps(value, sort_keys=True)


def _crop_param():
    return Query(None, max_length=200, description="use a region of each image instead of the whole of it: "
                 "left,top,right,bottom as fractions (0 to 1) of its width and height as displayed (EXIF "
                 "orientation applied), e.g. 0.25,0.1,0.75,0.9; the region is embedded as a whole image would be "
                 "(and POST /index keeps it as the item's thumbnail)")


def _check_crop(text: str | None) -> Crop | None:
    """The `crop` query parameter as a model.Crop, or None; 422 naming what is wrong."""
    if text is None or text == "":
        return None
    try:
        return parse_crop(text)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


def _no_crop_for_vectors(crop: Crop | None) -> None:
    if crop is not None:
        raise ApiError(422, "invalid_parameter", "crop is a region of an image; a JSON vector query has no image "
                                                 "(crop the image before embedding it)")


MAX_EXAMPLES = 100   # like + unlike ids in one search


def _examples_param(doc: str):
    return Query([], description=f"{doc}: the id of a gallery item (repeat the parameter for more, at most "
                 f"{MAX_EXAMPLES} like and unlike ids together). The query moves towards the liked items' vectors "
                 "and away from the unliked ones' (relevance feedback), and no marked item is returned; on POST "
                 "/search with no body at all, the marks alone are the query")


# index's MAX_GROUPED_RESULTS and MAX_SEARCH_WINDOW (and MAX_K, MAX_GROUP_SIZE below), which the command line
# applies: written here as well because index, with FAISS, is imported only once the service loads
# (tests/app/test_groups.py holds them equal)
MAX_GROUPED_RESULTS = 1000   # k groups x group_size items in one answer
MAX_SEARCH_WINDOW = 10_000   # offset + k items (with group_by: x group_size) a search reads to answer
MAX_K = 1000                 # neighbours (or groups) in one answer
MAX_GROUP_SIZE = 100         # items a group returns


def _group_by_param():
    return Query(None, max_length=MAX_LABEL_CHARS + 9,
                 description="return the k nearest groups instead of the k nearest items: `label` (items of one "
                             "label), or `metadata.KEY` (items with one value for that metadata key, e.g. "
                             "metadata.product); each group with its group_size nearest items, groups ranked by "
                             "their nearest item; items without a value are skipped. The answer's `groups` lists "
                             "them, and `results` holds their items group after group")


def _group_size_param():
    return Query(1, ge=1, le=MAX_GROUP_SIZE,
                 description=f"with group_by: items each group returns (k x group_size at most {MAX_GROUPED_RESULTS})")


MAX_EXCLUDED = 1000   # exclude ids in one search


def _exclude_param():
    return Query([], description="leave out this gallery item (repeat the parameter for more, at most "
                                 f"{MAX_EXCLUDED}): no item with one of these ids is returned, and the search reads "
                                 "as many more, so that k remain. For a next page of new items: the search page "
                                 "leaves out what it has shown when it searches again with marks. An id the "
                                 "gallery does not hold is no error")


def _offset_param():
    return Query(0, ge=0, le=MAX_SEARCH_WINDOW, description="skip this many nearest items first (with group_by: this "
                                                           "many groups), for the next page: offset=10&k=10 gives "
                                                           f"the 11th to 20th; offset + k at most {MAX_SEARCH_WINDOW}")


def _combine_param():
    return Query("mean", description="with several `file` parts, how the photos make one query: `mean`, items near "
                                     "all of them (the mean of their embeddings; for photos of a kind the model "
                                     "knows), or `best`, items near any of them (each photo searched, every item "
                                     "at its best score; for kinds of image the model never saw)",
                 json_schema_extra={"enum": ["mean", "best"]})   # checked by _check_combine, whose message says more


def _check_combine(combine: str, group_by: str | None, rerank: int | None) -> str:
    if combine not in ("mean", "best"):
        raise ApiError(422, "invalid_parameter", f"combine={combine!r}: give `mean` (items near all the photos) or "
                                                 "`best` (items near any of them)")
    if combine == "best" and (group_by or rerank is not None):
        what = "group_by" if group_by else "rerank"
        raise ApiError(422, "invalid_parameter", f"combine=best and {what} do not go together: best merges each "
                                                 f"photo's nearest items, {what} works on one query; use "
                                                 "combine=mean")
    return combine


def _check_exclude(exclude: list[str]) -> tuple[str, ...]:
    """The exclude ids, each once and checked, as SearchParams holds them; 422 naming what is wrong."""
    ids = tuple(dict.fromkeys(exclude))
    for value in ids:
        _check_id(value)
    if len(ids) > MAX_EXCLUDED:
        raise ApiError(422, "invalid_parameter", f"{len(ids)} exclude ids; at most {MAX_EXCLUDED} in one search")
    return ids


def _rerank_param():
    return Query(None, ge=1, le=1000, description="re-order this many nearest candidates with the model's PDDM head "
                                                  "and return the best k (needs an artifact with a PDDM head; at "
                                                  "least offset + k)")


def _check_examples(like: list[str], unlike: list[str], rerank: int | None) -> tuple[list[str], list[str]]:
    """The like and unlike ids, each once, checked; 422 naming what is wrong."""
    like, unlike = list(dict.fromkeys(like)), list(dict.fromkeys(unlike))
    for value in like + unlike:
        _check_id(value)
    if len(like) + len(unlike) > MAX_EXAMPLES:
        raise ApiError(422, "invalid_parameter", f"{len(like)} like and {len(unlike)} unlike ids; at most "
                                                 f"{MAX_EXAMPLES} together")
    both = sorted(set(like) & set(unlike))
    if both:
        raise ApiError(422, "invalid_parameter", f"id(s) {both[:5]} are both liked and unliked; mark each item "
                                                 "one way")
    if rerank is not None and (like or unlike):
        raise ApiError(422, "invalid_parameter", f"rerank={rerank} re-orders by the PDDM score of one image's "
                                                 "embedding; a query refined by like/unlike is a mix of several")
    return like, unlike


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_metadata(text: str, i: int) -> dict[str, Any]:
    import index as index_pkg  # see add()

    value = _json(text, "invalid_metadata", f"metadata part {i}")
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_metadata",
                       f"metadata part {i} must be a JSON object, got {type(value).__name__}: {text[:60]!r}")
    try:   # as the store will (1e999 is an infinity to Python, too big a number for JSON), before any write
        index_pkg.check_metadata(value, f"metadata part {i}")
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_metadata", str(exc)) from None
    return value


# ---- CPU work (runs in threads) ----------------------------------------------------------------

def _prepare(service: Service, files: list[tuple[str, bytes]], thumbnail_size: int,
             crop: Crop | None = None) -> tuple[np.ndarray, list]:
    # The model's input is made exactly as Embedder.embed makes it from a file (its own JPEG draft),
    # so an image indexed here, by `simsearch index build` or searched for gets the same vector.
    # With `crop` only that region of each image is embedded, and stored as its thumbnail.
    max_pixels, policy = service.settings.max_pixels, service.image_policy
    arrays, thumbs = [], []
    for what, data in files:
        t0 = time.perf_counter()
        arrays.append(decode_image(data, max_pixels, what=what, convert=lambda im: service.embedder.preprocess(im, crop),
                                   policy=policy))
        if thumbnail_size:
            img = decode_image(data, max_pixels, draft=draft_size(thumbnail_size, crop), what=what, policy=policy)
            try:
                thumbs.append(make_thumbnail(img, thumbnail_size, crop))
            except Exception as exc:  # noqa: BLE001  (a decoded image the thumbnailer cannot handle)
                raise ApiError(400, "invalid_image", f"{what}: cannot make a thumbnail: {exc}") from None
        else:
            thumbs.append(None)
        service.metrics.decode_seconds.observe(time.perf_counter() - t0)
    return np.stack(arrays), thumbs


def _search_params(service: Service, k: int, label: str | None, max_distance: float | None,
                   rerank: int | None, where: str | None, gallery: str = DEFAULT_GALLERY,
                   group_by: str | None = None, group_size: int = 1,
                   exclude: list[str] | None = None, offset: int = 0) -> SearchParams:
    """A search's query parameters, checked; 422 naming the one that is wrong."""
    if (offset + k) * (group_size if group_by else 1) > MAX_SEARCH_WINDOW:
        read = f"offset={offset} + k={k}" + (f" groups of group_size={group_size}" if group_by else "")
        raise ApiError(422, "invalid_parameter", f"{read}: a search reads at most {MAX_SEARCH_WINDOW} items to "
                                                 "answer; narrow it with filters, or leave out what was seen "
                                                 "(exclude)")
    if rerank is not None:
        if service.pddm is None:
            raise ApiError(422, "invalid_parameter", f"rerank={rerank}: the model {service.model_id} has no PDDM "
                                                     "head; rerank needs an artifact trained with the PDDM")
        if rerank < offset + k:
            at_least = f"offset + k = {offset + k}" if offset else f"k={k}"
            raise ApiError(422, "invalid_parameter", f"rerank={rerank} must be at least {at_least}: it is the "
                                                     "number of nearest candidates the PDDM re-orders")
    if group_by is not None:
        from index import check_group_by   # see _vote_dict
        try:
            check_group_by(group_by)
        except ValueError as exc:
            raise ApiError(422, "invalid_parameter", str(exc)) from None
        if rerank is not None:
            raise ApiError(422, "invalid_parameter", "rerank and group_by do not go together: rerank re-orders a "
                                                     "fixed number of nearest items, group_by reads as many as the "
                                                     "groups need")
        if k * group_size > MAX_GROUPED_RESULTS:
            raise ApiError(422, "invalid_parameter", f"k={k} groups of group_size={group_size} is {k * group_size} "
                                                     f"items; at most {MAX_GROUPED_RESULTS} in one answer")
    elif group_size != 1:
        raise ApiError(422, "invalid_parameter", f"group_size={group_size} needs group_by (label or metadata.KEY)")
    return SearchParams(k, _check_label(label), max_distance, rerank, _check_where(where), gallery, group_by,
                        group_size, _check_exclude(exclude or []), offset)


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _hit_dict(h) -> dict[str, Any]:
    score = min(1.0, max(-1.0, _finite(h.score)))  # float32 rounding can put a self-match at 1.0000001
    return {"id": h.id, "score": score, "distance": _finite(h.distance), "label": h.label, "metadata": h.metadata}


def _vote_param():
    return Query(False, description="also say which label the returned neighbours agree on (`vote`: label, "
                                    "confidence, votes), decided as POST /classify decides it, over these results")


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
    from index import group_hits   # see _vote_dict

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


# ---- routes ------------------------------------------------------------------------------------

@router.get("/healthz", tags=["probes"], summary="liveness: the process answers (HEAD too: the status alone)")
@router.head("/healthz", include_in_schema=False)   # as some load balancers probe; one operation in the OpenAPI
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["probes"], summary="readiness: model and index loaded (HEAD too: the status alone)",
            responses={503: _ERRORS[503]})
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request):
    service: Service = request.app.state.service
    if not service.ready:
        return error_response(503, "not_ready", f"the service is not ready: {service.reason}", {"Retry-After": "5"})
    return {"status": "ready", "model": service.model_id, "runtime": service.embedder.runtime,
            "index": service.store.spec, "read_only": service.settings.read_only}


@router.get("/metrics", tags=["probes"], summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page():
    index_html = STATIC_DIR / "index.html"
    if not index_html.is_file():
        return error_response(404, "not_found", "the search page is not installed (app/static/index.html)")
    return FileResponse(index_html, media_type="text/html")


@router.post("/search", response_model=SearchResponse, tags=["search"],
             summary="the k gallery items nearest to an uploaded image",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_search_body())
async def search(request: Request,
                 k: int = Query(10, ge=1, le=MAX_K, description="how many neighbours"),
                 label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="only this label"),
                 max_distance: float | None = Query(None, ge=0, allow_inf_nan=False,
                                                    description="only neighbours at most this far (0..2)"),
                 rerank: int | None = _rerank_param(),
                 where: str | None = Query(None, max_length=4096, description=_WHERE_DOC),
                 crop: str | None = _crop_param(),
                 like: list[str] = _examples_param("more like this item"),
                 unlike: list[str] = _examples_param("less like this item"),
                 group_by: str | None = _group_by_param(), group_size: int = _group_size_param(),
                 exclude: list[str] = _exclude_param(), offset: int = _offset_param(),
                 combine: str = _combine_param(),
                 vote: bool = _vote_param(), gallery: str = _gallery(), after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, gallery)
    params = _search_params(service, k, label, max_distance, rerank, where, g.name, group_by, group_size,
                            exclude, offset)
    like, unlike = _check_examples(like, unlike, rerank)
    combine = _check_combine(combine, group_by, rerank)
    hits = await _search_request(request, service, g, params, _check_crop(crop), like, unlike, combine)
    return _search_answer(service, hits, params, t0, vote)


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


async def _embedded(service: Service, files: list[tuple[str, bytes]], crop: Crop | None,
                    params: SearchParams | None = None) -> tuple[np.ndarray, Any]:
    """The images' vectors, and with `params` the one image's hits, through the micro-batcher. Images that
    are slow to decode (a large PNG: nothing decodes it at a reduced scale) are decoded first in a thread of
    their own, one request at a time, so that the batches of everyone else's queries never wait behind them."""
    def decode() -> np.ndarray:
        return _prepare(service, files, 0, crop)[0]

    policy = service.image_policy
    if any(slow_to_decode(data, policy) for _, data in files):
        _check_whole_decode_budget(service, files)
        if service.slow_decodes_waiting >= SLOW_DECODE_QUEUE:
            # a queue past this holds request slots for nothing but to wait: everyone else would get 503s
            service.metrics.rejected.labels("slow_decode_queue").inc()
            raise ApiError(503, "overloaded", f"{service.slow_decodes_waiting} requests with large images that "
                           "decode whole (PNG, WebP, GIF, BMP, AVIF) are already waiting to be decoded, one at a "
                           "time; retry shortly, or send a smaller image or a JPEG", {"Retry-After": "2"})
        service.metrics.slow_decodes.inc()
        service.slow_decodes_waiting += 1
        try:
            arrays = await anyio.to_thread.run_sync(decode, limiter=service.slow_decode_limiter)
        finally:
            service.slow_decodes_waiting -= 1
        return await service.batcher.submit(arrays, params)
    return await service.batcher.submit_encoded(decode, len(files), params)


SLOW_DECODE_QUEUE = 8   # requests decoding large whole-decoded images, the one at work included (~0.7 s each at most)


def _check_whole_decode_budget(service: Service, files: list[tuple[str, bytes]]) -> None:
    """413 when the images of one request that decode whole hold more pixels in all than one image may
    (SIMSEARCH_MAX_PIXELS): 64 such images of 64 MP in a 165 KB request held the slow lane 43 s."""
    budget = service.settings.max_pixels
    sizes = [whole_decode_pixels(data, service.image_policy) for _, data in files]
    if any(size > budget for size in sizes):
        return   # one image over the limit: decode_image refuses it, naming it
    total = sum(sizes)
    if total > budget:
        raise ApiError(413, "image_too_large", f"the {len(files)} images of this request hold {total:,} pixels in "
                       f"formats decoded whole (PNG, WebP, GIF, BMP, AVIF), more than the {budget:,} one request "
                       "may (SIMSEARCH_MAX_PIXELS); send fewer or smaller images, or JPEGs (decoded at the "
                       "model's scale)")


def _together(vectors: np.ndarray) -> np.ndarray:
    """(1, dim): the unit mean of the images' vectors, the one query several photos of a thing make; 422 when
    they cancel out (no direction is left to search in)."""
    from index import mean_query   # see _vote_dict

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
    the marks, several images combined as `combine` says (_check_combine)."""
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
        from index import best_of   # see _vote_dict

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
                          like: list[str], unlike: list[str], start: str | None = None) -> list[list]:
    """The hits of each query vector (None: no query, the marks alone; or the item `start` as the one
    query) moved towards the items `like` and away from the items `unlike` (index.refine_query), searched
    as params ask; no marked item, nor `start`, nor one of params.exclude is among them. 422 naming a marked
    id the gallery does not hold, 404 for a missing `start`."""
    from index import refine_queries   # see _vote_dict

    def run():
        queries_of = queries
        if start is not None:
            item = g.store.get(start)
            if item is None:
                raise ApiError(404, "not_found", f"no item with id {start!r} in the gallery")
            queries_of = [item.vector]
        refined = refine_queries(g.store, queries_of, like, unlike)
        # the service's search, so that filters, groups and the gallery checks apply as to any search
        left_out = params.exclude + tuple(like + unlike + ([start] if start is not None else []))
        return service.search(refined, dataclasses.replace(params, exclude=left_out))

    try:
        return await anyio.to_thread.run_sync(run)
    except KeyError as exc:
        missing = exc.args[0]
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ApiError(422, "invalid_parameter", f"like/unlike: no item with id(s) {missing[:5]} in gallery "
                                                 f"{g.name!r}{more}") from None
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


@router.post("/classify", response_model=ClassifyResponse, tags=["search"],
             summary="the label the gallery items nearest to an image agree on (classification by retrieval)",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_search_body())
async def classify(request: Request,
                   k: int = Query(1, ge=1, le=100, description="how many nearest items vote (unlabelled ones "
                                                               "abstain; 1: the nearest item's label)"),
                   max_distance: float | None = Query(None, ge=0, allow_inf_nan=False,
                                                      description="only items at most this far vote; none that "
                                                                  "near: label null (unknown). `simsearch "
                                                                  "evaluate` gives the distance for a wanted "
                                                                  "precision (match_thresholds)"),
                   where: str | None = Query(None, max_length=4096, description="only gallery items matching this "
                                                                                "metadata filter vote; " + _WHERE_DOC),
                   crop: str | None = _crop_param(), combine: str = _combine_param(),
                   gallery: str = _gallery(), after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, gallery)
    params = _search_params(service, k, None, max_distance, None, where, g.name)
    hits = await _search_request(request, service, g, params, _check_crop(crop), [], [],
                                 _check_combine(combine, None, None))
    return JSONResponse({**_vote_dict(hits), "results": [_hit_dict(h) for h in hits], "k": k,
                         "took_ms": (time.perf_counter() - t0) * 1000, "model": service.model_id,
                         "reranked": False, "candidates": None})


@router.post("/batch/search", response_model=BatchSearchResponse, tags=["search"],
             summary="the k gallery items nearest to each of several images (or vectors), in one request",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
             openapi_extra=_batch_search_body())
async def batch_search(request: Request,
                       k: int = Query(10, ge=1, le=MAX_K, description="how many neighbours for each query"),
                       label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="only this label"),
                       max_distance: float | None = Query(None, ge=0, allow_inf_nan=False,
                                                          description="only neighbours at most this far (0..2)"),
                       rerank: int | None = Query(None, ge=1, le=1000, description="as for POST /search"),
                       where: str | None = Query(None, max_length=4096, description=_WHERE_DOC),
                       crop: str | None = _crop_param(),
                       like: list[str] = _examples_param("more like this item, for every query"),
                       unlike: list[str] = _examples_param("less like this item, for every query"),
                       group_by: str | None = _group_by_param(), group_size: int = _group_size_param(),
                       exclude: list[str] = _exclude_param(), offset: int = _offset_param(),
                       vote: bool = _vote_param(), gallery: str = _gallery(), after: str | None = _after()):
    # One request, one model call and one index call for up to SIMSEARCH_MAX_FILES_PER_REQUEST queries:
    # on a small machine most of a single search's cost is HTTP (docs/results/benchmarks.md).
    t0 = time.perf_counter()
    service, g = await _reading(request, after, gallery)
    params = _search_params(service, k, label, max_distance, rerank, where, g.name, group_by, group_size,
                            exclude, offset)
    region = _check_crop(crop)   # the same region of every image
    like, unlike = _check_examples(like, unlike, rerank)   # the same marks for every query
    media_type = _media_type(request.headers.get("content-type", ""))
    if media_type == "application/json":
        _no_crop_for_vectors(region)
        vectors = _query_vectors(await _read_body(request), service.embedder.dim,
                                 service.settings.max_files_per_request, service.model_id)
        names: list[str | None] = [None] * len(vectors)
        if like or unlike:
            hits = await _search_refined(service, g, params, list(vectors), like, unlike)
        else:
            hits = await anyio.to_thread.run_sync(service.search, vectors, params)
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
    return JSONResponse({"queries": [{"name": n, **_results(found, group_by, offset),
                                      **({"vote": _vote_dict(found)} if vote else {})}
                                     for n, found in zip(names, hits)],
                         "k": k, "took_ms": (time.perf_counter() - t0) * 1000, "model": service.model_id,
                         "reranked": rerank is not None, "candidates": rerank, "offset": offset})


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
async def search_by_id(request: Request, id: str = Path(description="gallery id"),
                       k: int = Query(10, ge=1, le=MAX_K), label: str | None = Query(None, max_length=MAX_LABEL_CHARS),
                       max_distance: float | None = Query(None, ge=0, allow_inf_nan=False),
                       where: str | None = Query(None, max_length=4096, description=_WHERE_DOC),
                       like: list[str] = _examples_param("more like this item"),
                       unlike: list[str] = _examples_param("less like this item"),
                       group_by: str | None = _group_by_param(), group_size: int = _group_size_param(),
                       exclude: list[str] = _exclude_param(), offset: int = _offset_param(),
                       rerank: int | None = _rerank_param(),
                       vote: bool = _vote_param(), gallery: str = _gallery(), after: str | None = _after()):
    t0 = time.perf_counter()
    service, g = await _reading(request, after, gallery)
    like, unlike = _check_examples(like, unlike, rerank)
    params = _search_params(service, k, label, max_distance, rerank, where, g.name, group_by, group_size,
                            exclude, offset)
    if like or unlike or group_by or params.exclude or offset or rerank:   # the item's vector, as any query's
        hits = (await _search_refined(service, g, params, [None], like, unlike, start=id))[0]
        return _search_answer(service, hits, params, t0, vote)
    where_filter = json.loads(params.where) if params.where else None

    def run():
        t = time.perf_counter()
        hits = g.store.search_by_id(id, k=k, label=params.label, max_distance=max_distance, where=where_filter)
        service.metrics.search_seconds.observe(time.perf_counter() - t)
        return hits

    try:
        hits = await anyio.to_thread.run_sync(run)
    except KeyError:
        raise ApiError(404, "not_found", f"no item with id {id!r} in the gallery") from None
    return _search_answer(service, hits, params, t0, vote)


@router.post("/index", status_code=201, response_model=IndexResponse, tags=["gallery"],
             summary="add (or replace, by id) one or more images",
             responses={k: _ERRORS[k] for k in (400, 401, 403, 413, 415, 422, 429, 503, 507)},
             openapi_extra=_multipart(
                 "one or more images with optional ids, labels and metadata",
                 {"file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                  "id": {"type": "array", "items": {"type": "string"},
                         "description": "one per file; generated when absent; an existing id is replaced"},
                  "label": {"type": "array", "items": {"type": "string"}, "description": "one, or one per file"},
                  "metadata": {"type": "array", "items": {"type": "string"},
                               "description": "a JSON object: one for all files, or one per file"}}))
async def add(request: Request, gallery: str = _gallery(), crop: str | None = _crop_param(),
              skip_duplicates: float | None = Query(
                  None, gt=0, le=1, allow_inf_nan=False,
                  description="do not store a file whose cosine similarity with an item of another id in the gallery "
                              "(or a file stored before it) is at least this; 0.98 catches copies (re-encoded, "
                              "resized), lower values look-alikes. The answer's `skipped` names each file left out "
                              "and its look-alike. Decided as the items are committed, so two requests carrying the "
                              "same new image at once store it once")):
    import index as index_pkg  # imported when used: the app answers /healthz before torch and FAISS load

    service = _service(request, write=True)
    thumb = service.settings.thumbnail_size
    region = _check_crop(crop)   # the same region of every image: embedded, and kept as its thumbnail
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
    arrays, thumbs = await anyio.to_thread.run_sync(_prepare, service, files, thumb, region,
                                                    limiter=service.decode_limiter)
    vectors, _ = await service.batcher.submit(arrays)
    items = [index_pkg.Item(id=i, vector=v, label=lb, metadata=m, thumbnail=t)
             for i, v, lb, m, t in zip(ids, vectors, labels, metas, thumbs)]
    _, g = await _writing(request, gallery, create=True)   # once the request is known to be sound
    try:
        skipped = await g.commits.upsert(items, skip_duplicates)   # with the other requests waiting to commit
    except RuntimeError:   # its committer stopped: the gallery was just deleted, or the service is stopping
        raise ApiError(503, "index_unavailable", f"gallery {g.name!r} was closed while this request was under way "
                       "(deleted, or the service is stopping); nothing of it was stored", {"Retry-After": "1"}) from None
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "rejected_by_index", str(exc)) from None
    except index_pkg.StoreError as exc:
        raise _write_refused(exc, service) from None
    left_out = {d.position for d in skipped}
    stored = [i for pos, i in enumerate(ids) if pos not in left_out]
    answer = IndexResponse(ids=stored, count=len(stored), skipped=[
        SkippedItem(file=d.position, id=d.id, duplicate_of=d.duplicate_of, score=d.score) for d in skipped])
    return JSONResponse(answer.model_dump(), status_code=201, headers=_position(g))


@router.get("/index", response_model=IndexInfo, tags=["gallery"],
            summary="gallery size, dimension, model, index kind, and a page of the listing",
            responses={k: _ERRORS[k] for k in (400, 401, 403, 404, 409, 422, 429, 503)})
async def info(request: Request,
               offset: int = Query(0, ge=0, le=MAX_OFFSET,
                                   description="items to skip (after `after`, when given). Unstable under writes: a "
                                               "delete before the offset moves an item back across it, which the next "
                                               "page then skips; to export, page with `after`"),
               limit: int = Query(100, ge=1, le=1000),
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
    import index as index_pkg  # see add()

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
                 field: str = Query(max_length=MAX_LABEL_CHARS + 9,
                                    description="`label`, or `metadata.KEY` for a top-level key of the items' "
                                                "metadata (e.g. metadata.album)"),
                 label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="only items with this label"),
                 where: str | None = Query(None, max_length=4096, description="only items matching this metadata "
                                                                              "filter; " + _WHERE_DOC),
                 limit: int = Query(100, ge=1, le=1000, description="most values in the answer"),
                 gallery: str = _gallery(), after: str | None = _after()):
    from index import check_group_by   # see _vote_dict

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


@router.get("/index/{id:path}/thumbnail", tags=["gallery"], summary="the item's stored JPEG thumbnail",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}},
                                                304: {"description": "If-None-Match names the thumbnail's ETag: "
                                                                     "unchanged"},
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


def _item_out(item, vector: bool) -> ItemOut:
    return ItemOut(id=item.id, label=item.label, metadata=item.metadata,
                   vector=item.vector.tolist() if vector else None)


@router.delete("/index", response_model=DeleteResponse, tags=["gallery"],
               summary="remove every gallery item that matches a label and/or a metadata filter",
               responses={k: _ERRORS[k] for k in (401, 403, 404, 422, 429, 503, 507)})
async def delete_matching(request: Request,
                          label: str | None = Query(None, max_length=MAX_LABEL_CHARS, description="items with this label"),
                          where: str | None = Query(None, max_length=4096,
                                                    description=_WHERE_DOC.replace("neighbours", "items")),
                          gallery: str = _gallery()):
    import index as index_pkg  # see add()

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


@router.patch("/index/{id:path}", response_model=ItemOut, tags=["gallery"],
              summary="change an item's label and/or metadata, keeping its image, vector and place",
              responses={k: _ERRORS[k] for k in (401, 403, 404, 413, 415, 422, 429, 503, 507)},
              openapi_extra={"requestBody": {"required": True, "content": {t: {"schema": {
                  "type": "object", "additionalProperties": False, "minProperties": 1,   # {}: a 422, nothing to change
                  "properties": {"label": {"type": ["string", "null"], "description": "the new label; null removes it"},
                                 "metadata": {"type": "object", "description": "a JSON merge patch (RFC 7396): "
                                              "each key given is set, a key given as null is removed"}}}}
                  for t in ("application/json", "application/merge-patch+json")}}})
async def update_item(request: Request, id: str = Path(), gallery: str = _gallery()) -> JSONResponse:
    import index as index_pkg  # see add()

    service, g = await _writing(request, gallery)
    id = _check_id(id)
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
        if body["label"] is not None and not isinstance(body["label"], str):
            raise ApiError(422, "invalid_label", f"label must be a string or null, got {json.dumps(body['label'])[:60]}")
        changes["label"] = _check_label(body["label"])
    if "metadata" in body:
        if not isinstance(body["metadata"], dict):
            raise ApiError(422, "invalid_metadata", "metadata must be a JSON object (a merge patch: null removes a "
                                                    f"key), got {json.dumps(body['metadata'])[:60]}")
        changes["metadata_patch"] = body["metadata"]
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
               responses={k: _ERRORS[k] for k in (401, 403, 404, 422, 429, 503, 507)}, response_class=Response)
async def delete_item(request: Request, id: str = Path(), gallery: str = _gallery()) -> Response:
    import index as index_pkg  # see add()

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

    def run():
        out = []
        for name in service.gallery_names():
            g = service.galleries.get(name)
            if g is not None:
                out.append(GalleryOut(name=name, count=g.store.count(), open=True))
                continue
            count = service.unopened_count(name)
            if count is not None:
                out.append(GalleryOut(name=name, count=count, open=False))
        return out

    listed = await anyio.to_thread.run_sync(run)
    return JSONResponse(GalleriesResponse(galleries=listed, max_galleries=service.settings.max_galleries).model_dump())


@router.delete("/galleries/{name}", response_model=GalleryDeleted, tags=["gallery"],
               summary="delete a named gallery: its items, its index and its folder",
               responses={k: _ERRORS[k] for k in (401, 403, 404, 422, 429, 503)})
async def delete_gallery(request: Request, name: str = Path(pattern=GALLERY_NAME)):
    service = _service(request, write=True)
    deleted = await service.drop_gallery(name)
    return JSONResponse(GalleryDeleted(name=name, deleted=deleted).model_dump())
