"""Reading a request's body: the image itself or multipart `file` parts (with the settings' part-count and
field-size limits: the body is parsed here, not by FastAPI params, so that they apply), text fields in UTF-8,
per-file fields, JSON vectors, ids and metadata; and the OpenAPI description of the bodies the routes read.
index (FAISS) is imported inside the functions that use it: the service answers /healthz before FAISS and
torch load."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ._errors import ApiError, route_path
from ._settings import Settings


# a form's `file` parts: at least one (a form without one is a 400 missing_file)
def _file_parts_schema() -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}


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
                      {"file": _file_parts_schema()})
    binary = {"schema": {"type": "string", "format": "binary"}}
    spec["requestBody"]["content"].update({t: binary for t in _RAW_IMAGE_TYPES})
    spec["requestBody"]["content"]["application/json"] = {"schema": {
        "type": "object", "required": ["vector"], "additionalProperties": False,
        "properties": {"vector": {"type": "array", "items": {"type": "number"},
                                  "description": "the model's dimension; normalised to unit length"},
                       "model": _MODEL_FIELD}}}
    return spec


def _index_body() -> dict[str, Any]:
    """POST /index's body: images with their ids, labels and metadata as a form, or vectors as JSON."""
    spec = _multipart(
        "one or more images with optional ids, labels and metadata; or vectors, as JSON "
        '{"model": "name@sha12", "items": [{"id": ..., "vector": [...], "label": ..., "metadata": {...}}, ...]}',
        {"file": _file_parts_schema(),
         "id": {"type": "array", "items": {"type": "string"},
                "description": "one per file; generated when absent; an existing id is replaced"},
         "label": {"type": "array", "items": {"type": "string"}, "description": "one, or one per file"},
         "metadata": {"type": "array", "items": {"type": "string"},
                      "description": "a JSON object: one for all files, or one per file"}})
    item = {"type": "object", "required": ["vector"], "additionalProperties": False, "properties": {
        "id": {"type": ["string", "null"], "description": "generated when absent; an existing id is replaced"},
        "vector": {"type": "array", "items": {"type": "number"},
                   "description": "the model's dimension; stored normalised to unit length"},
        "label": {"type": ["string", "null"]},
        "metadata": {"type": ["object", "null"], "description": "a JSON object, as a form's metadata part"}}}
    spec["requestBody"]["content"]["application/json"] = {"schema": {
        "type": "object", "required": ["model", "items"], "additionalProperties": False,
        "properties": {"model": {**_MODEL_FIELD, "description": "the model that made the vectors (name@sha12, as "
                                                                "/readyz, GET /index and an exported ONNX file's "
                                                                "simsearch.model_id give it); another model's "
                                                                "vectors are refused with 409"},
                       "items": {"type": "array", "minItems": 1, "items": item,
                                 "description": "at most SIMSEARCH_MAX_FILES_PER_REQUEST items (413 past it); "
                                                "ids unique within the request"}}}}
    return spec


def _batch_search_body() -> dict[str, Any]:
    spec = _embed_body()
    spec["requestBody"]["description"] = ("the query images as multipart `file` parts (or one image itself as "
                                          'the body); or query vectors, as JSON {"vectors": [[...], ...]}; or '
                                          'gallery items, as JSON {"ids": [...]}, each searched with its stored '
                                          "vector, itself excluded (as POST /search/{id})")
    vectors = {"type": "object", "required": ["vectors"], "additionalProperties": False,
               "properties": {"vectors": {"type": "array", "minItems": 1, "items": {
                   "type": "array", "items": {"type": "number"},
                   "description": "the model's dimension; normalised to unit length"}},
                   "model": _MODEL_FIELD}}
    ids = {"type": "object", "required": ["ids"], "additionalProperties": False,
           "properties": {"ids": {"type": "array", "minItems": 1, "items": {"type": "string"},
                                  "description": "ids of gallery items, at most SIMSEARCH_MAX_FILES_PER_REQUEST "
                                                 "(413 past it); one the gallery does not hold is a 404 naming it"}}}
    spec["requestBody"]["content"]["application/json"] = {"schema": {"oneOf": [vectors, ids]}}
    return spec


def _embed_body() -> dict[str, Any]:
    spec = _search_body()
    spec["requestBody"]["description"] = "one or more multipart `file` parts, or one image itself as the body"
    del spec["requestBody"]["content"]["application/json"]   # POST /embed takes images only (a vector is one already)
    form = spec["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    form["file"] = _file_parts_schema()
    return spec


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


def _settings(request: Request) -> Settings:
    return request.app.state.settings


# A body with one of these types is the image itself (`curl --data-binary @photo.jpg`); the format
# is still decided from the bytes, never from the type.
_RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream")


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def _json(text: str | bytes, code: str, what: str, twice_hint: str = "") -> Any:
    """Strict JSON (no NaN or Infinity, no key twice in one object); a 422 with `code` saying what in `what` is
    wrong (`twice_hint` after the words for a key given twice)."""
    from index import RepeatedKey, unique_keys   # when used (module docstring)

    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except RepeatedKey as exc:
        raise ApiError(422, code, f"{what} gives the key {exc.args[0]!r} twice in one object, and only one of the "
                                  f"two could be used: give each key once{twice_hint}") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, code, f"{what} is not valid JSON: {exc}") from None


def _vector_body(body: bytes, key: str, shape: str, model_id: str, model_required: bool = False) -> dict:
    """A JSON body of vectors: an object with `key` and `model` (optional unless `model_required`: a write
    needs it, or another model's vectors would be mixed into the gallery), which must be this service's
    model (vectors of two models cannot be compared); 422 or 409 naming what is wrong."""
    return _vector_object(_json(body, "invalid_vector", "the body"), key, shape, model_id, model_required)


def _vector_object(value: Any, key: str, shape: str, model_id: str, model_required: bool = False,
                   or_else: str = "") -> dict:
    """_vector_body of the body's JSON `value`; `or_else` says what other body the route takes, in the 422."""
    if not isinstance(value, dict) or key not in value or not set(value) <= {key, "model"}:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        model_is = '"model": "name@sha12"' if model_required else 'an optional "model"'
        raise ApiError(422, "invalid_vector", f'the JSON body must be {{"{key}": {shape}}}, with {model_is}, '
                                              f"and nothing else{or_else}; got {got}")
    model = value.get("model")
    if model is None and model_required:
        raise ApiError(422, "invalid_vector", f'"model" is required: the model that made the vectors (name@sha12: '
                                              f"{model_id!r} here, as GET /index, /readyz and an exported ONNX "
                                              "file's simsearch.model_id name it), so that no other model's vector "
                                              "is mixed into the gallery")
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


def _batch_queries(body: bytes, dim: int, max_count: int, model_id: str) -> np.ndarray | list[str]:
    """The queries of a JSON batch search body: its `vectors` as an (n, dim) float32 array, or its `ids`
    ({"ids": [...]}: gallery items, searched with their stored vectors) as a list of strings, each checked by
    the caller; 422 (413 for too many) naming what is wrong."""
    value = _json(body, "invalid_vector", "the body")
    if isinstance(value, dict) and "ids" in value:
        return _query_ids(value, max_count)
    return _query_vectors(value, dim, max_count, model_id)


def _query_ids(value: dict, max_count: int) -> list[str]:
    if set(value) != {"ids"}:
        raise ApiError(422, "invalid_parameter", 'the JSON body must be {"ids": [...]} and nothing else (the stored '
                                                 'vectors are the queries: no "model", no "vectors"); got '
                                                 f"{sorted(value)}")
    ids = value["ids"]
    if not isinstance(ids, list) or not ids:
        raise ApiError(422, "invalid_parameter", "ids must be a non-empty list of gallery ids, got "
                                                 f"{json.dumps(ids)[:40]}")
    if len(ids) > max_count:
        raise ApiError(413, "too_many_ids", f"{len(ids)} ids in one request; at most {max_count} "
                                            "(SIMSEARCH_MAX_FILES_PER_REQUEST)")
    for i, id_ in enumerate(ids):
        if not isinstance(id_, str):
            raise ApiError(422, "invalid_id", f"ids[{i}] must be a string, got {json.dumps(id_)[:40]}")
    return ids


def _query_vectors(value: Any, dim: int, max_count: int, model_id: str) -> np.ndarray:
    """The `vectors` of a JSON batch search body (its parsed `value`), as an (n, dim) float32 array; 422 (413
    for too many) naming the vector that is wrong."""
    value = _vector_object(value, "vectors", "[[...], ...]", model_id, or_else=' (or {"ids": [...]})')
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
    try:
        arr = np.asarray(vec, dtype=np.float64)
    except OverflowError:   # an integer past float64 (10**309 written out: valid JSON); 1e309 reads as inf
        raise ApiError(422, "invalid_vector", f"{what} must have a finite, non-zero length (a number in it is too "
                                              "large for a float)") from None
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


# What else the routes that read a form take, by the last segment of their path, for the 415 of another body
_OTHER_BODIES = {
    "search": (" (or the image itself as the body, with Content-Type image/jpeg, image/png, ... or "
               "application/octet-stream; or a vector as an application/json body)"),
    "index": ' (or vectors, as an application/json body {"model": "name@sha12", "items": [{"vector": [...]}, ...]})',
}


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
                       + _OTHER_BODIES.get(route_path(request.scope).rstrip("/").rsplit("/", 1)[-1], ""))
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


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_metadata(text: str, i: int) -> dict[str, Any]:
    value = _json(text, "invalid_metadata", f"metadata part {i}")
    return _checked_metadata(value, f"metadata part {i}", text)


def _checked_metadata(value: Any, what: str, text: str | None = None) -> dict[str, Any]:
    """`value` (JSON, read from `text` when given) as an item's metadata; 422 invalid_metadata naming `what` is
    wrong with it, as the store would say it, before any write."""
    import index as index_pkg  # when used (module docstring)

    if not isinstance(value, dict):
        shown = text if text is not None else json.dumps(value)
        raise ApiError(422, "invalid_metadata",
                       f"{what} must be a JSON object, got {type(value).__name__}: {shown[:60]!r}")
    try:   # as the store will (1e999 is an infinity to Python, too big a number for JSON), before any write
        index_pkg.check_metadata(value, what)
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_metadata", str(exc)) from None
    return value
