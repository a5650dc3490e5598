"""Response bodies (they make the OpenAPI document at /docs)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One neighbour: higher score (cosine similarity) is nearer; distance = sqrt(2 - 2 score)."""

    id: str
    score: float
    distance: float
    label: str | None = None
    metadata: dict[str, Any] | None = None


class _Answer(BaseModel):
    k: int
    took_ms: float = Field(description="time spent on the request in the server, milliseconds")
    model: str = Field(description="the model that embedded the queries (name@sha12)")
    reranked: bool = Field(False, description="whether the PDDM head re-ordered the candidates")
    candidates: int | None = Field(None, description="how many nearest candidates were re-ordered (rerank)")
    offset: int = Field(0, description="how many nearest items (with group_by: groups) were skipped: `offset`")


class Vote(BaseModel):
    """The label the returned neighbours agree on, as POST /classify decides it."""

    label: str | None = Field(description="the label most of the labelled neighbours have (a tie: the nearest's); "
                                          "null when none has a label")
    confidence: float = Field(description="the label's share of the votes (0 when there is no label)")
    votes: dict[str, int] = Field(description="votes by label, most first")


class Group(BaseModel):
    value: Any = Field(description="the label, or the metadata key's value, the group's items share")
    results: list[Hit] = Field(description="its nearest items (at most group_size), nearest first")


class SearchResponse(_Answer):
    results: list[Hit] = Field(description="nearest first; with `group_by`, group after group (the nearest group "
                                           "first), each group's items nearest first")
    vote: Vote | None = Field(None, description="with `vote=true` only: the label these results agree on")
    groups: list[Group] | None = Field(None, description="with `group_by` only: the groups, the nearest first")
    note: str | None = Field(None, description="with `group_by` and no groups only: why there may be none (no "
                                               "item found has a value for that field)")


class ClassifyResponse(_Answer):
    label: str | None = Field(description="the label most of the neighbours that vote have (a tie: the nearest's); "
                                          "null when none has a label or none is within max_distance")
    confidence: float = Field(description="the label's share of the votes (0 when there is no label)")
    votes: dict[str, int] = Field(description="votes by label, most first")
    results: list[Hit] = Field(description="the neighbours that were asked, nearest first")


class QueryResults(BaseModel):
    name: str | None = Field(None, description="the query's file name as sent, when it came as a named `file` "
                                        "part; for a search by ids (a JSON body {\"ids\": [...]}), the query's id")
    results: list[Hit] = Field(description="nearest first (with `group_by`: group after group)")
    vote: Vote | None = Field(None, description="with `vote=true` only: the label these results agree on")
    groups: list[Group] | None = Field(None, description="with `group_by` only: the groups, the nearest first")
    note: str | None = Field(None, description="with `group_by` and no groups only: why there may be none (no "
                                               "item found has a value for that field)")


class BatchSearchResponse(_Answer):
    queries: list[QueryResults] = Field(description="one per query image or vector, in the order sent")


class EmbedResponse(BaseModel):
    model: str = Field(description="the model that embedded the images (name@sha12)")
    dimension: int
    vectors: list[list[float]] = Field(description="one unit vector per image, in the order sent; the cosine "
                                                   "similarity of two is their dot product")


class SkippedItem(BaseModel):
    file: int = Field(description="its place among the request's `file` parts (or a JSON body's `items`), from 0")
    id: str = Field(description="the id it would have had")
    duplicate_of: str = Field(description="the id of the look-alike already stored (or stored before it)")
    score: float = Field(description="their cosine similarity, at least `skip_duplicates`")


class IndexResponse(BaseModel):
    ids: list[str] = Field(description="the ids of the stored items, in the order of the `file` parts (or of a "
                                       "JSON body's `items`)")
    count: int = Field(description="how many items were stored")
    skipped: list[SkippedItem] = Field(default_factory=list,
                                       description="with `skip_duplicates`: the files (or JSON items) not "
                                                   "stored, as look-alikes")
    gallery_created: bool = Field(False, description="true when this write made the gallery (`gallery=NAME` "
                                                     "named none, and SIMSEARCH_CREATE_GALLERIES_ON_WRITE is on); "
                                                     "sent only then, so that a typo in a name shows")


class DeleteResponse(BaseModel):
    deleted: int = Field(description="how many items were removed (durably, before this answer)")


class UpdateResponse(BaseModel):
    updated: int = Field(description="how many items matched and now have the label and/or metadata patch given "
                                     "(durably, before this answer); one that had them already counts too")


class ItemOut(BaseModel):
    id: str
    label: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = Field(None, description="the stored unit vector; only with vector=true")


class IndexInfo(BaseModel):
    count: int = Field(description="items in the gallery")
    matching: int | None = Field(None, description="items that match `label` and `where`; null without them")
    dimension: int
    model: str
    index: str = Field(description="the index kind asked for (preset or FAISS factory string)")
    index_kind: str | None = Field(None, description="what FAISS runs now (e.g. exact until an IVF is trained)")
    items: list[ItemOut] = Field(description="one page of the listing, in insertion order")
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page (with the same `after`); null on the last "
                                                "page, and with limit=0. Unstable under writes: use next_after to "
                                                "export")
    after: int | None = Field(None, description="the `after` asked for")
    next_after: int | None = Field(None, description="the listing position of this page's last item: `after=` for "
                                                     "the next page, which no write moves an unchanged item across; "
                                                     "null on the last page, and with limit=0")
    read_only: bool = Field(False, description="this service serves the index read-only (SIMSEARCH_READ_ONLY): "
                                               "writes to it get 405")
    position: str | None = Field(None, description="where this listing stands in the writer's history (what "
                                                   "X-Simsearch-Position answers a write with)")
    gallery: str = Field("default", description="the gallery listed")


class GalleryOut(BaseModel):
    name: str
    count: int = Field(description="items in it")
    open: bool = Field(description="the service has it open (its index in memory); others open when first asked for")


class GalleriesResponse(BaseModel):
    galleries: list[GalleryOut] = Field(description="the default gallery first, then the named ones by name")
    max_galleries: int = Field(description="how many galleries the service makes, the default one included "
                                           "(SIMSEARCH_MAX_GALLERIES); those already there always open")


class DuplicatePair(BaseModel):
    score: float = Field(description="cosine of the two items' vectors")
    a: str = Field(description="one id (the pair's ids in order)")
    b: str
    label_a: str | None = None
    label_b: str | None = None
    labels_differ: bool = Field(description="the same picture, or near it, under two labels")


class DuplicatesResponse(BaseModel):
    items: int = Field(description="items searched")
    min_score: float
    k: int
    pairs_found: int = Field(description="pairs at min_score or more, before `conflicts` and `limit`")
    labels_differ: int = Field(description="of them, pairs whose labels differ")
    pairs: list[DuplicatePair] = Field(description="the most alike first; only those whose labels differ with "
                                                   "conflicts=true; at most `limit`")
    truncated: bool = Field(description="more pairs than `limit` matched")
    gallery: str


class FacetValue(BaseModel):
    value: Any = Field(description="a label, or a JSON scalar the metadata key holds (2024 and 2024.0 are one)")
    count: int = Field(description="items with this value, or with a list that holds it")


class FacetsResponse(BaseModel):
    field: str = Field(description="`label` or `metadata.KEY`, as asked")
    items: int = Field(description="items that match the filters (all of the gallery's without any)")
    values: list[FacetValue] = Field(description="the most common first (a tie: by the value's text); at most `limit`")
    distinct: int = Field(description="how many values there are, shown or not")
    others: int = Field(description="items whose value is one of those past `limit`")
    missing: int = Field(description="items with no value: no label, or no such metadata key")
    not_scalar: int = Field(description="items whose value is an object, or a list without a scalar element "
                                        "(not counted by value; a list counts once under each of its values)")
    gallery: str


class GalleryDeleted(BaseModel):
    name: str
    deleted: int = Field(description="items the gallery held")


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, stable: for programs (docs/service.md, Errors)")
    message: str = Field(description="for people: names the value that was wrong")
    request_id: str | None = Field(None, description="the request's id (its X-Request-ID): quote it when reporting "
                                                     "an error; the service's log line of the request holds it")


class ErrorResponse(BaseModel):
    error: ErrorDetail
