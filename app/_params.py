"""What a request asks for besides its body: the query parameters and headers the routes declare (FastAPI
Query and Header factories), the limits they hold to and the checks that turn them into what the service takes
(422 naming the one that is wrong); the router's check that a request sends no parameter its route does not
declare; and the ready service and gallery a request is for.
index (FAISS) is imported inside the functions that use it: the service answers /healthz before FAISS and
torch load."""
from __future__ import annotations

import json
import unicodedata
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request

from model import Crop, parse_crop

from ._answers import POSITION_HEADER, _read_only
from ._batcher import SearchParams
from ._bodies import _json
from ._errors import ApiError
from ._service import DEFAULT_GALLERY, GALLERY_NAME, Gallery, Service

MAX_ID_CHARS = 1024   # the store's limit
MAX_LABEL_CHARS = 256
MAX_OFFSET = 2**62   # the store's limit: offset + limit must fit SQLite's 64-bit integers
# a read that sends back a write's POSITION_HEADER here is answered from a state at least that new
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


def _router() -> APIRouter:
    """A router whose routes refuse a query parameter they do not declare (_known_query_only)."""
    return APIRouter(dependencies=[Depends(_known_query_only)])


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
    import index as index_pkg  # when used (module docstring)

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
        from index import check_group_by   # when used (module docstring)
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


def _vote_param():
    return Query(False, description="also say which label the returned neighbours agree on (`vote`: label, "
                                    "confidence, votes), decided as POST /classify decides it, over these results")
