"""What a request asks for besides its body: the query parameters and headers the routes declare (the searches'
as query-parameter models, SearchQuery and its kin; the others' as FastAPI Query and Header factories), the limits
they hold to and the checks that turn them into what the service takes (422 naming the one that is wrong); the
router's check that a request sends no parameter its route does not declare, nor a single-valued one twice; and
the ready service and gallery a request is for.
index (FAISS) is imported inside the functions that use it: the service answers /healthz before FAISS and
torch load."""
from __future__ import annotations

import json
import types
import unicodedata
import weakref
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field, PrivateAttr, model_validator

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


def _takes_several(annotation: Any) -> bool:
    """Whether a query parameter of this type takes all its values (`list[str]`: exclude=a&exclude=b), as FastAPI
    reads a sequence annotation, rather than one."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):   # list[str] | None
        return any(_takes_several(arg) for arg in get_args(annotation))
    return (origin or annotation) in (list, set, frozenset, tuple)


def _declared_query(dependant) -> dict[str, bool]:
    """The query parameters a route declares, its dependencies' and its query-parameter models' fields included
    (SearchQuery): each name, and whether it takes several values (a list: `exclude=a&exclude=b`), as FastAPI
    decides it (a list annotation: all the values; any other: the last one only)."""
    names: dict[str, bool] = {}
    for field in dependant.query_params:
        model = field.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update({f.alias or name: _takes_several(f.annotation)
                          for name, f in model.model_fields.items()})
        else:
            names[field.alias] = _takes_several(field.field_info.annotation)
    for sub in dependant.dependencies:
        names.update(_declared_query(sub))
    return names


# What each route declares (_declared_query), found once a route, keyed by id(route): routes are not hashable (a
# WeakKeyDictionary cannot hold them), and each entry goes with its route (a router made and let go, as in a test)
_QUERY_OF: dict[int, dict[str, bool]] = {}


async def _known_query_only(request: Request) -> None:
    """422 for a query parameter the endpoint does not take: a misspelt `lable=cat` or a `rerank` where
    there is none would otherwise be ignored, and the answer would look right. And 422 for one that takes a
    single value given more than once (`k=3&k=50`), of which FastAPI would take the last: a client's bug
    (two code paths that each set k) would pass unseen. List parameters (`exclude`, `like`) repeat."""
    route = request.scope.get("route")
    if route is None or not request.scope.get("query_string") or not route.include_in_schema:
        return   # the page's own address carries what its script reads (?gallery=NAME), and a browser's extras
    known = _QUERY_OF.get(id(route))
    if known is None:
        known = _QUERY_OF[id(route)] = _declared_query(route.dependant)
        weakref.finalize(route, _QUERY_OF.pop, id(route), None)   # an id is reused once its route is gone
    query = request.query_params
    unknown = sorted({name for name in query if name not in known})
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ApiError(422, "invalid_parameter", f"{request.method} {route.path_format} takes no query parameter "
                       f"{', '.join(map(repr, unknown))}; it takes: {takes}")
    given = query.multi_items()
    if len(given) != len(query):   # a name given more than once (len: the distinct names)
        _single_values_once(request.method, route.path_format, given, known)


def _single_values_once(method: str, path: str, given: list[tuple[str, str]], known: dict[str, bool]) -> None:
    """422 naming each single-valued parameter in `given` (the query's name, value pairs) given more than
    once, and its values."""
    values: dict[str, list[str]] = {}
    for name, value in given:
        values.setdefault(name, []).append(value)
    twice = [name for name, got in values.items() if len(got) > 1 and not known[name]]
    if not twice:
        return

    def said(name: str) -> str:
        got = values[name]
        shown = ", ".join(repr(v) if len(v) <= 40 else repr(v[:40]) + "..." for v in got[:5])
        more = f" and {len(got) - 5} more" if len(got) > 5 else ""
        return f"{name!r} {len(got)} times ({shown}{more})"

    repeatable = sorted(name for name, many in known.items() if many)
    also = f"; only {', '.join(repeatable)} may repeat" if repeatable else ""
    raise ApiError(422, "invalid_parameter", f"{method} {path} takes one value of each query parameter, and got "
                   f"{'; '.join(map(said, twice))}: send each once{also}")


def _router() -> APIRouter:
    """A router whose routes refuse a query parameter they do not declare, and a single-valued one given twice
    (_known_query_only)."""
    return APIRouter(dependencies=[Depends(_known_query_only)])


def _service(request: Request, write: bool = False) -> Service:
    """The ready service (503 until it is); for a write, 405 when it serves its index read-only."""
    service: Service = request.app.state.service
    service.require_ready()
    if write and service.settings.read_only:
        raise _read_only()
    return service


# what index.parse_position takes, or empty (as if not sent): declared in the schema only, so that a position that
# does not fit stays the service's 400 invalid_position, not a parameter's 422
POSITION_PATTERN = r"^([0-9]{1,19}\.[0-9]{1,19})?$"


def _after() -> Any:
    # no max_length: a position too long to be one is a 400 invalid_position like any malformed one
    return Header(None, alias=AFTER_HEADER,
                  description="answer from a state of the gallery at least as new as this position (the "
                              f"{POSITION_HEADER} a write answered): read-your-writes on a read-only replica, "
                              "which applies the writer's changes first when it is behind. Opaque: two whole numbers "
                              "joined by a dot (the last write's sequence number, the edit count), each of which only "
                              "grows: to keep the newest of several, compare them as pairs of integers, never as "
                              "decimals (1.10 is after 1.9). Empty: as if not sent",
                  examples=["1042.7"], json_schema_extra={"pattern": POSITION_PATTERN})


_GALLERY_DOC = ("which gallery: `default` (the service's first, in DATA/index) or a named one (lower-case letters, "
                "digits, - and _), which PUT /galleries/NAME makes (and, unless SIMSEARCH_CREATE_GALLERIES_ON_WRITE is "
                "false, the first POST /index to it)")


def _gallery() -> Any:
    return Query(DEFAULT_GALLERY, min_length=1, max_length=63, pattern=GALLERY_NAME, description=_GALLERY_DOC)


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
              '$or / $and of such objects; "$label" for the item\'s label (string values; unlabelled items match '
              '$ne/$nin), e.g. {"source": "phone", "year": {"$gte": 2020}} (URL-encoded)')


def _check_where(text: str | None) -> str | None:
    """The `where` query parameter as canonical JSON (keys sorted), or None; 422 naming what is wrong."""
    if text is None or text == "":
        return None
    value = _json(text, "invalid_parameter", f"where={text[:80]!r}",
                  ' (several conditions on one key go in one object, {"n": {"$gte": 1, "$lt": 5}}, or in $and)')
    import index as index_pkg  # when used (module docstring)

    if value is None:   # JSON null is no filter to the store; as a parameter it is a mistake, said as one
        raise ApiError(422, "invalid_parameter", 'where=null: give a non-empty JSON object of metadata keys and '
                                                 'values, e.g. {"source": "phone"}, or leave where out')
    try:
        index_pkg.check_where(value)
    except index_pkg.InvalidItemError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None
    return json.dumps(value, sort_keys=True)


_CROP_DOC = ("use a region of each image instead of the whole of it: left,top,right,bottom as fractions (0 to 1) of "
             "its width and height as displayed (EXIF orientation applied), e.g. 0.25,0.1,0.75,0.9; the region is "
             "embedded as a whole image would be (and POST /index keeps it as the item's thumbnail)")


def _crop_param():
    return Query(None, max_length=200, description=_CROP_DOC)


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


def _examples_doc(doc: str) -> str:
    return (f"{doc}: the id of a gallery item (repeat the parameter for more, at most {MAX_EXAMPLES} like and unlike "
            "ids together). The query moves towards the liked items' vectors and away from the unliked ones' "
            "(relevance feedback), and no marked item is returned; on POST /search with no body at all, the marks "
            "alone are the query")


# index's MAX_GROUPED_RESULTS and MAX_SEARCH_WINDOW (and MAX_K, MAX_GROUP_SIZE below), which the command line
# applies: written here as well because index, with FAISS, is imported only once the service loads
# (tests/app/test_groups.py holds them equal)
MAX_GROUPED_RESULTS = 1000   # k groups x group_size items in one answer
MAX_SEARCH_WINDOW = 10_000   # offset + k items (with group_by: x group_size) a search reads to answer
MAX_K = 1000                 # neighbours (or groups) in one answer
MAX_GROUP_SIZE = 100         # items a group returns


_GROUP_BY_DOC = ("return the k nearest groups instead of the k nearest items: `label` (items of one label), or "
                 "`metadata.KEY` (items with one value for that metadata key, e.g. metadata.product); each group "
                 "with its group_size nearest items, groups ranked by their nearest item; items without a value are "
                 "skipped. The answer's `groups` lists them, and `results` holds their items group after group")


MAX_EXCLUDED = 1000   # exclude ids in one search
_EXCLUDE_DOC = (f"leave out this gallery item (repeat the parameter for more, at most {MAX_EXCLUDED}): no item with "
                "one of these ids is returned, and the search reads as many more, so that k remain. For a next page "
                "of new items: the search page leaves out what it has shown when it searches again with marks. An id "
                "the gallery does not hold is no error")

_COMBINE_DOC = ("with several `file` parts, how the photos make one query: `mean`, items near all of them (the mean of "
                "their embeddings; for photos of a kind the model knows), or `best`, items near any of them (each "
                "photo searched, every item at its best score; for kinds of image the model never saw)")


def _check_combine(combine: str) -> None:
    if combine not in ("mean", "best"):
        raise ApiError(422, "invalid_parameter", f"combine={combine!r}: give `mean` (items near all the photos) or "
                                                 "`best` (items near any of them)")


def _not_with_best(what: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"combine=best and {what} do not go together: best merges each photo's "
                                              f"nearest items, {what} works on one query; use combine=mean")


def _check_exclude(exclude: list[str]) -> list[str]:
    """The exclude ids, each once and checked; 422 naming what is wrong."""
    ids = list(dict.fromkeys(exclude))
    for value in ids:
        _check_id(value)
    if len(ids) > MAX_EXCLUDED:
        raise ApiError(422, "invalid_parameter", f"{len(ids)} exclude ids; at most {MAX_EXCLUDED} in one search")
    return ids


def _check_examples(like: list[str], unlike: list[str]) -> tuple[list[str], list[str]]:
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
    return like, unlike


# what index.check_group_by takes (group_by, a facet's field): declared in the schema only, so that one that does not
# fit stays the 422 that says what to give
GROUPING_PATTERN = r"^(label|metadata\.[\s\S]+)$"


def _check_group_by(group_by: str) -> None:
    from index import check_group_by   # when used (module docstring)
    try:
        check_group_by(group_by)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


def _check_can_rerank(service: Service, rerank: int, read: int, offset: int) -> None:
    """422 when the service's model has no PDDM head, or when rerank re-orders fewer than the `read` (offset + k)
    nearest items the answer needs."""
    if service.pddm is None:
        raise ApiError(422, "invalid_parameter", f"rerank={rerank}: the model {service.model_id} has no PDDM "
                                                 "head; rerank needs an artifact trained with the PDDM")
    if rerank < read:
        at_least = f"offset + k = {read}" if offset else f"k={read}"
        raise ApiError(422, "invalid_parameter", f"rerank={rerank} must be at least {at_least}: it is the "
                                                 "number of nearest candidates the PDDM re-orders")


_RERANK_DOC = ("re-order this many nearest candidates with the model's PDDM head and return the best k (needs an "
               "artifact with a PDDM head; at least offset + k)")
_MIN_SCORE_DOC = ("only neighbours with at least this cosine similarity (their `score`, -1..1): the same cut as "
                  "max_distance in the other unit, applied as max_distance = sqrt(2 - 2 min_score), so a neighbour "
                  "whose score is exactly min_score is kept; give one of the two (both: 422)")


def _distance_cut(max_distance: float | None, min_score: float | None) -> float | None:
    """The max_distance a search applies: max_distance as given, or min_score's, sqrt(2 - 2 min_score), by the
    function the index computes a hit's distance from its score with (index.score_to_distance), so that an item whose
    score is min_score exactly has that distance exactly and is kept. min_score=-1 is no cut at all: a float32 score can
    lie just past -1, and the answer shows it as -1 (_answers._hit_dict). 422 naming both when both are given."""
    if min_score is None:
        return max_distance
    if max_distance is not None:
        raise ApiError(422, "invalid_parameter", f"max_distance={max_distance} and min_score={min_score} are "
                                                 "one cut in two units (distance = sqrt(2 - 2 score)); keep one: "
                                                 "min_score for a cosine similarity, max_distance for a distance")
    if min_score <= -1:
        return None
    from index import score_to_distance   # when used (module docstring)

    return score_to_distance(min_score)


# index's NLIST_MAX and EF_SEARCH_MAX (index/_faiss.py), the bounds of a search's own nprobe and ef_search, written
# here for the same reason (tests/app/test_search_params_http.py holds them equal)
MAX_NPROBE = 16384
MAX_EF_SEARCH = 32768
_NPROBE_DOC = ("IVF galleries (index ivf or ivfpq): how many of the index's lists this search probes, 1 to the number "
               "of lists it has (`index_kind` in GET /index names it, e.g. IndexIVFFlat(nlist=400)), in place of the "
               "gallery's own (an eighth of them, 16 to 128): more is nearer the exact answer, and slower. A label or "
               "where filter widens it as it widens the gallery's own. 422 for a gallery of another kind")
_EF_SEARCH_DOC = (f"HNSW galleries (index hnsw): how many candidates this search keeps as it walks the graph, k to "
                  f"{MAX_EF_SEARCH}, in place of the gallery's own (128): more is nearer the exact answer, and slower. "
                  "A label or where filter widens it as it widens the gallery's own. 422 for a gallery of another kind")
_EXACT_DOC = ("compare the query with every vector of the gallery at full precision, the answer a flat index gives, "
              "to see what an approximate index misses (its recall): flat as always; ivf probes every list; hnsw "
              "searches the flat store of its vectors instead of its graph; ivfpq compares the stored vectors "
              "themselves, read from the database (slow: about a second per million items). Not with nprobe or "
              "ef_search")


def _check_tuning(k: int, nprobe: int | None, ef_search: int | None, exact: bool) -> None:
    """422 for what a search's own index parameters cannot mean whatever the gallery: exact with nprobe or
    ef_search, ef_search below k. (Whether the gallery's kind takes them, and nprobe's bound, its number of lists,
    need the gallery: Service.search.)"""
    if exact and (nprobe is not None or ef_search is not None):
        given = "nprobe" if nprobe is not None else "ef_search"
        raise ApiError(422, "invalid_parameter", f"exact=true compares every vector: {given}="
                                                 f"{nprobe if nprobe is not None else ef_search} has nothing left to "
                                                 "set; give one of the two")
    if ef_search is not None and ef_search < k:
        raise ApiError(422, "invalid_parameter", f"ef_search={ef_search} is less than k={k}: HNSW keeps ef_search "
                                                 f"candidates and returns the best k of them; give {k}.."
                                                 f"{MAX_EF_SEARCH}")


# The parameters more than one of the models below takes, said once
_MaxDistance = Annotated[float | None, Field(ge=0, allow_inf_nan=False)]
_MinScore = Annotated[float | None, Field(ge=-1, le=1, allow_inf_nan=False, description=_MIN_SCORE_DOC)]
_Where = Annotated[str | None, Field(max_length=4096)]
_K = Annotated[int, Field(ge=1, le=MAX_K)]
_Crop = Annotated[str | None, Field(max_length=200, description=_CROP_DOC)]
# checked by _check_combine, whose message says more than the enum's would
_Combine = Annotated[str, Field(description=_COMBINE_DOC, json_schema_extra={"enum": ["mean", "best"]})]
_Gallery = Annotated[str, Field(min_length=1, max_length=63, pattern=GALLERY_NAME, description=_GALLERY_DOC)]
_Nprobe = Annotated[int | None, Field(ge=1, le=MAX_NPROBE, description=_NPROBE_DOC)]
_EfSearch = Annotated[int | None, Field(ge=1, le=MAX_EF_SEARCH, description=_EF_SEARCH_DOC)]
_Exact = Annotated[bool, Field(description=_EXACT_DOC)]


class NeighbourQuery(BaseModel):
    """The query parameters of a search by neighbours, declared once: POST /search, /search/{id} and /batch/search
    each take a model made of this one with what else that route takes (SearchQuery, SearchByIdQuery,
    BatchSearchQuery), as `Annotated[Model, Query()]`, and /openapi.json lists each field as a parameter of its
    own. Every route checks a request in one order: FastAPI the types and bounds (a 422 naming each wrong one); then
    the model what the request alone decides, the first wrong thing named (`_check_request`); then `params`, what
    needs the service. The route makes the one call, `q.params(service, gallery)`."""

    k: _K = Field(10, description="how many neighbours")
    label: str | None = Field(None, max_length=MAX_LABEL_CHARS, description="only this label")
    max_distance: _MaxDistance = Field(None, description="only neighbours at most this far (0..2)")
    min_score: _MinScore = None
    rerank: int | None = Field(None, ge=1, le=1000, description=_RERANK_DOC)
    where: _Where = Field(None, description=_WHERE_DOC)
    like: list[str] = Field([], description=_examples_doc("more like this item"))
    unlike: list[str] = Field([], description=_examples_doc("less like this item"))
    group_by: str | None = Field(None, max_length=MAX_LABEL_CHARS + 9, description=_GROUP_BY_DOC,
                                 json_schema_extra={"pattern": GROUPING_PATTERN})
    group_size: int = Field(1, ge=1, le=MAX_GROUP_SIZE, description="with group_by: items each group returns (k x "
                                                                    f"group_size at most {MAX_GROUPED_RESULTS})")
    exclude: list[str] = Field([], description=_EXCLUDE_DOC)
    offset: int = Field(0, ge=0, le=MAX_SEARCH_WINDOW, description="skip this many nearest items first (with "
                        "group_by: this many groups), for the next page: offset=10&k=10 gives the 11th to 20th; "
                        f"offset + k at most {MAX_SEARCH_WINDOW}")
    vote: bool = Field(False, description="also say which label the returned neighbours agree on (`vote`: label, "
                                          "confidence, votes), decided as POST /classify decides it, over these "
                                          "results")
    nprobe: _Nprobe = None
    ef_search: _EfSearch = None
    exact: _Exact = False

    _region: Crop | None = PrivateAttr(None)
    _max_distance: float | None = PrivateAttr(None)   # max_distance, or min_score's (_distance_cut)

    @model_validator(mode="after")
    def _checked(self) -> NeighbourQuery:
        # Runs once every field has its type and bounds. An ApiError passes through FastAPI as it is: a 422 with
        # the service's code (invalid_id, invalid_label) and message, where pydantic's ValueError would be one
        # about the query as a whole.
        self._check_request()
        return self

    def _check_request(self) -> None:
        """The checks the request alone decides (no service, no index: it may not have loaded yet), in the order
        every search route says them; the ids each once, the label None for an empty one."""
        k, offset, group_by, group_size = self.k, self.offset, self.group_by, self.group_size
        if (offset + k) * (group_size if group_by else 1) > MAX_SEARCH_WINDOW:
            read = f"offset={offset} + k={k}" + (f" groups of group_size={group_size}" if group_by else "")
            raise ApiError(422, "invalid_parameter", f"{read}: a search reads at most {MAX_SEARCH_WINDOW} items to "
                                                     "answer; narrow it with filters, or leave out what was seen "
                                                     "(exclude)")
        if group_by is not None and k * group_size > MAX_GROUPED_RESULTS:
            raise ApiError(422, "invalid_parameter", f"k={k} groups of group_size={group_size} is {k * group_size} "
                                                     f"items; at most {MAX_GROUPED_RESULTS} in one answer")
        if group_by is None and group_size != 1:
            raise ApiError(422, "invalid_parameter", f"group_size={group_size} needs group_by (label or "
                                                     "metadata.KEY)")
        self.label = _check_label(self.label)
        self._max_distance = _distance_cut(self.max_distance, self.min_score)
        self.exclude = _check_exclude(self.exclude)
        self.like, self.unlike = _check_examples(self.like, self.unlike)
        _check_tuning(k, self.nprobe, self.ef_search, self.exact)

    @property
    def region(self) -> Crop | None:
        """The crop parameter as a model.Crop (None: the whole image, or a route that takes no crop)."""
        return self._region

    def params(self, service: Service, gallery: str) -> SearchParams:
        """What the search asks the index for, after the checks that need the service: rerank needs a model with
        a PDDM head (said before anything else about rerank), then its other limits; group_by and where as the
        index reads them. 422 naming what is wrong."""
        if self.rerank is not None:
            _check_can_rerank(service, self.rerank, self.offset + self.k, self.offset)
        if self.group_by is not None:
            _check_group_by(self.group_by)
        if self.rerank is not None:
            self._check_rerank_alone()
        return SearchParams(self.k, self.label, self._max_distance, self.rerank, _check_where(self.where), gallery,
                            self.group_by, self.group_size, tuple(self.exclude), self.offset, self.nprobe,
                            self.ef_search, self.exact)

    def _check_rerank_alone(self) -> None:
        """422 for what rerank cannot work with: groups, or a query refined by marks."""
        if self.group_by is not None:
            raise ApiError(422, "invalid_parameter", "rerank and group_by do not go together: rerank re-orders a "
                                                     "fixed number of nearest items, group_by reads as many as the "
                                                     "groups need")
        if self.like or self.unlike:
            raise ApiError(422, "invalid_parameter", f"rerank={self.rerank} re-orders by the PDDM score of one "
                                                     "image's embedding; a query refined by like/unlike is a mix of "
                                                     "several")


class SearchQuery(NeighbourQuery):
    """POST /search's query parameters: NeighbourQuery's, and crop, combine and gallery."""

    crop: _Crop = None
    combine: _Combine = "mean"
    gallery: _Gallery = DEFAULT_GALLERY

    def _check_request(self) -> None:
        super()._check_request()
        _check_combine(self.combine)
        if self.combine == "best" and self.group_by:
            raise _not_with_best("group_by")
        self._region = _check_crop(self.crop)

    def _check_rerank_alone(self) -> None:
        super()._check_rerank_alone()
        if self.combine == "best":
            raise _not_with_best("rerank")


class SearchByIdQuery(NeighbourQuery):
    """POST /search/{id}'s query parameters: NeighbourQuery's, and gallery (no image: no crop, no combine)."""

    gallery: _Gallery = DEFAULT_GALLERY


class BatchSearchQuery(NeighbourQuery):
    """POST /batch/search's query parameters: NeighbourQuery's, said of each of its queries, and crop (the same
    region of every image) and gallery. No combine: each image is a query of its own."""

    k: _K = Field(10, description="how many neighbours for each query")
    like: list[str] = Field([], description=_examples_doc("more like this item, for every query"))
    unlike: list[str] = Field([], description=_examples_doc("less like this item, for every query"))
    crop: _Crop = None
    gallery: _Gallery = DEFAULT_GALLERY

    def _check_request(self) -> None:
        super()._check_request()
        self._region = _check_crop(self.crop)


class ClassifyQuery(BaseModel):
    """The query parameters of POST /classify, as SearchQuery is a search's, checked in the same order: the
    request's own (combine, then crop), then in `params` the service's (where)."""

    k: int = Field(1, ge=1, le=100, description="how many nearest items vote (unlabelled ones abstain; 1: the "
                                                "nearest item's label)")
    max_distance: _MaxDistance = Field(None, description="only items at most this far vote; none that near: label "
                                                         "null (unknown). `simsearch evaluate` gives the distance for "
                                                         "a wanted precision (match_thresholds)")
    min_score: _MinScore = None
    where: _Where = Field(None, description="only gallery items matching this metadata filter vote; " + _WHERE_DOC)
    crop: _Crop = None
    combine: _Combine = "mean"
    gallery: _Gallery = DEFAULT_GALLERY
    nprobe: _Nprobe = None
    ef_search: _EfSearch = None
    exact: _Exact = False

    _region: Crop | None = PrivateAttr(None)
    _max_distance: float | None = PrivateAttr(None)   # max_distance, or min_score's (_distance_cut)

    @model_validator(mode="after")
    def _checked(self) -> ClassifyQuery:
        # as NeighbourQuery._checked: once the fields have their types and bounds; an ApiError passes through
        self._max_distance = _distance_cut(self.max_distance, self.min_score)
        _check_combine(self.combine)
        self._region = _check_crop(self.crop)
        _check_tuning(self.k, self.nprobe, self.ef_search, self.exact)
        return self

    @property
    def region(self) -> Crop | None:
        """The crop parameter as a model.Crop (None: the whole image)."""
        return self._region

    def params(self, service: Service, gallery: str) -> SearchParams:
        """The search whose neighbours vote: k of them, filtered as asked; 422 for a `where` the index refuses."""
        return SearchParams(self.k, max_distance=self._max_distance, where=_check_where(self.where), gallery=gallery,
                            nprobe=self.nprobe, ef_search=self.ef_search, exact=self.exact)
