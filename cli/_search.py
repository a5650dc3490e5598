"""`simsearch search IMAGE...` (the nearest gallery items of each query, or of several photos together) and
`simsearch classify IMAGE...` (the label the nearest items vote for), here or through a running service (--url)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _galleries as g
from ._errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("search", help="print the nearest gallery images of an image (or of many)",
                       description="Search the index with one query image, or with many: several files, folders "
                                   "(searched recursively) or tars of images, embedded in batches. With several "
                                   "queries, --json prints one JSON object a line ({\"query\", \"label\", "
                                   "\"results\"}), and where the queries sit in class folders (ImageFolder) the "
                                   "share whose nearest neighbour has the query's label is reported (on stderr "
                                   "with --json, so that stdout holds JSON only).")
    _query_options(q, k=10, k_help="number of neighbours (10)", where_help='only neighbours whose metadata matches, '
                   'e.g. \'{"source": "phone", "year": {"$gte": 2020}}\' (operators: docs/index.md "Filters")',
                   distance_help="only neighbours within this distance (0 or more: distances between unit "
                                 "vectors lie in 0..2, so 2 or more keeps every item)",
                   url_help="search a running service instead (its POST /batch/search, many queries a request), "
                            "e.g. http://127.0.0.1:8000; --data and --model are then its own",
                   images_help=" (none with --like: the marked items alone are the query)")
    q.add_argument("--label", help="only neighbours with this label")
    q.add_argument("--rerank", type=int, metavar="N", help="re-order the N nearest candidates with the model's "
                                                            "PDDM head and print the best k (N >= k)")
    q.add_argument("--like", action="append", default=[], metavar="ID",
                   help="more like this gallery item (repeat for more): every query moves towards the liked items "
                        "and away from the unliked ones, and no marked item is printed (the service's like=)")
    q.add_argument("--unlike", action="append", default=[], metavar="ID", help="less like this gallery item")
    q.add_argument("--group-by", metavar="FIELD",
                   help="print the k nearest groups instead of the k nearest items: `label`, or `metadata.KEY` "
                        "(e.g. metadata.product); groups rank by their nearest item, items without a value are "
                        "skipped (the service's group_by)")
    q.add_argument("--group-size", type=int, default=1, metavar="N", help="with --group-by: items printed a group (1)")
    q.add_argument("--exclude", action="append", default=[], metavar="ID",
                   help="never print this gallery item (repeat for more; the service's exclude=)")
    q.add_argument("--offset", type=int, default=0, metavar="N",
                   help="skip the N nearest first (with --group-by, N groups): the next page, -k 10 --offset 10 "
                        "prints the 11th to 20th (the service's offset=)")
    q.set_defaults(func=_search, classify=False)

    v = sub.add_parser("classify", help="print the label the nearest gallery images agree on, for an image (or many)",
                       description="Classification by retrieval, as the service's POST /classify: the k nearest "
                                   "gallery items vote with their labels (unlabelled ones abstain; a tie goes to "
                                   "the label of the nearest of the tied), and no item within --max-distance "
                                   "(or --min-score) means unknown. Queries as for `simsearch search`; with "
                                   "several, --json prints one JSON object a line, and where the queries sit in "
                                   "class folders the share classified as their folder's label is reported (on "
                                   "stderr with --json, so that stdout holds JSON only).")
    _query_options(v, k=1, k_help="how many nearest items vote (1: the nearest item's label)",
                   where_help="only gallery items whose metadata matches vote (as for search)",
                   distance_help="only items within this distance vote (0 or more; 2 or more keeps every item); "
                                 "none: unknown (`simsearch evaluate` gives it for a wanted precision)",
                   url_help="classify with a running service instead (its POST /batch/search, many queries a "
                            "request, voted here as its /classify votes)")
    v.set_defaults(func=_search, classify=True, label=None, rerank=None, like=[], unlike=[], group_by=None,
                   group_size=1, exclude=[], offset=0)


def _query_options(p: argparse.ArgumentParser, k: int, k_help: str, where_help: str, distance_help: str,
                   url_help: str, images_help: str = "") -> None:
    """The options `search` and `classify` share: the queries, where the gallery is, and how to ask."""
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files, folders or tars of them" + images_help)
    g.common_options(p, model=True, milvus=True)
    p.add_argument("-k", type=int, default=k, help=k_help)
    p.add_argument("--where", metavar="JSON", help=where_help)
    p.add_argument("--max-distance", type=float, help=distance_help)
    p.add_argument("--min-score", type=float, metavar="SCORE",
                   help="the same cut as --max-distance in the other unit: only neighbours with at least this "
                        "cosine similarity (the printed score, -1..1; the service's min_score), applied as "
                        "--max-distance sqrt(2 - 2 SCORE), so a neighbour whose score is SCORE exactly is kept; "
                        "give one of the two")
    p.add_argument("--crop", metavar="L,T,R,B", help="use only this region of each query image: left,top,right,"
                                                      "bottom as fractions (0 to 1) of its width and height, e.g. "
                                                      "0.25,0.1,0.75,0.9 (the service's crop=)")
    p.add_argument("--together", action="store_true",
                   help="the query images are several photos of one kind of thing: one query, the mean of their "
                        "embeddings (as the service's POST /search with several file parts)")
    p.add_argument("--combine", choices=("mean", "best"), default="mean",
                   help="with --together: `mean`, images near all of them (the mean of their embeddings; for a "
                        "kind the model knows), or `best`, images near any of them (each searched, every item at "
                        "its best score; for kinds of image the model never saw) (the service's combine=)")
    p.add_argument("--nprobe", type=int, metavar="N",
                   help="an IVF gallery (index ivf, ivfpq): probe N of its lists (1 to its number of lists) in place "
                        "of its own number; more is nearer the exact answer, and slower (the service's nprobe=)")
    p.add_argument("--ef-search", type=int, metavar="N",
                   help="an HNSW gallery (index hnsw): keep N candidates (k to 32768) in place of its own 128; more "
                        "is nearer the exact answer, and slower (the service's ef_search=)")
    p.add_argument("--exact", action="store_true",
                   help="compare every vector of the gallery at full precision, whatever its index (the answer a "
                        "flat index gives): to see what an approximate index misses (the service's exact=true)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--url", help=url_help)
    p.add_argument("--api-key", help="with --url, where the service needs a key for searches (default "
                                     "$SIMSEARCH_API_KEY, else the first key of $SIMSEARCH_API_KEY_FILE)")
    p.add_argument("--timeout", type=float, default=120.0, help="with --url: seconds to wait for an answer (120)")
    p.add_argument("--after", metavar="POSITION", help="with --url: answers from a gallery at least as new as this "
                                                       "position (what a write or `index upload` reported), from a "
                                                       "read-only replica too")


def _search(args) -> int:
    """`simsearch search` and `simsearch classify`: the options checked, the queries read, then each answered
    here (_search_local) or by the service at --url."""
    where, crop, like, unlike = _checked(args)
    queries, sources = g.queries(args.images)
    first = Path(args.images[0]) if args.images else None
    single = args.together or not args.images or (len(queries) == 1 and first.is_file() and not g.is_tar(first))
    show = _Answers(args, single)
    try:
        if args.url:
            from . import _remote

            if args.together or not args.images:   # one query: the images together, or the marks alone
                return _remote.search_together(args, _read_together(queries), len(queries), show)
            labelled, agree, failed = _remote.search(args, queries, single, show)
        else:
            labelled, agree, failed = _search_local(args, queries, single, show, where, crop, like, unlike)
            if labelled is None:   # one answer, given
                return failed
    finally:
        for source in sources:
            source.close()
    return _search_summary(args, labelled, agree, failed, len(queries), show.unknown)


def _checked(args):
    """(where, crop, like, unlike) from the options, each checked as the service checks its parameters, before
    the model loads; CliError naming the option otherwise."""
    import math

    import index

    if not 1 <= args.k <= index.MAX_K:   # as the service's k
        raise CliError(f"-k must be 1..{index.MAX_K}, got {args.k}")
    if args.max_distance is not None and not 0 <= args.max_distance < math.inf:   # NaN too, as the service's
        raise CliError(f"--max-distance must be a number of 0 or more (distances between unit vectors lie in 0..2, "
                       f"so 2 or more keeps every item), got {args.max_distance}")
    args.max_distance = _distance_cut(args.max_distance, args.min_score)
    g.check_label_arg(args.label)
    where = g.where_arg(args.where)
    crop = g.crop_arg(args.crop)
    like, unlike = list(dict.fromkeys(args.like)), list(dict.fromkeys(args.unlike))
    if set(like) & set(unlike):
        raise CliError(f"--like and --unlike both name {sorted(set(like) & set(unlike))[:5]}; mark each item one way")
    if (like or unlike) and args.rerank is not None:
        raise CliError("--rerank re-orders by the PDDM score of one image's embedding; a query refined by "
                       "--like/--unlike is a mix of several")
    _check_groups(args)
    _check_offset(args)
    _check_tuning(args)
    if not args.images and (args.classify or not like):
        raise CliError("give query images" + ("" if args.classify else ", or --like ID: the marked items alone are "
                                                                      "then the query"))
    if not args.images and (args.together or crop):
        raise CliError(f"--{'together' if args.together else 'crop'} needs query images")
    if args.combine != "mean":
        if not args.together:
            raise CliError(f"--combine {args.combine} is how --together makes one query of several images; "
                           "add --together")
        if args.group_by or args.rerank is not None:
            raise CliError(f"--combine best and --{'group-by' if args.group_by else 'rerank'} do not go together: "
                           "best merges each image's nearest items; use --combine mean")
    if args.url and args.model:
        raise CliError("--model with --url: the service searches with its own model")
    if args.after and not args.url:
        raise CliError("--after is for a search through a service (--url); a local search reads the index as it is")
    return where, crop, like, unlike


def _check_tuning(args) -> None:
    """--nprobe, --ef-search and --exact checked as the service checks nprobe, ef_search and exact before it
    reads the gallery (whose index kind and number of lists the store checks); CliError otherwise."""
    for option, value in (("--nprobe", args.nprobe), ("--ef-search", args.ef_search)):
        if value is not None and value < 1:
            raise CliError(f"{option} must be a positive number, got {value}")
        if value is not None and args.exact:
            raise CliError(f"--exact compares every vector: {option} {value} has nothing left to set; give one of "
                           "the two")
    if args.ef_search is not None and args.ef_search < args.k:
        raise CliError(f"--ef-search {args.ef_search} is less than -k {args.k}: HNSW keeps that many candidates and "
                       "prints the best k of them; give at least -k")


def _tuning(args) -> dict:
    """--nprobe, --ef-search, --exact as the store's search takes them ({} for none: the gallery's own)."""
    given = {"nprobe": args.nprobe, "ef_search": args.ef_search, "exact": args.exact or None}
    return {name: value for name, value in given.items() if value is not None}


def _distance_cut(max_distance: float | None, min_score: float | None) -> float | None:
    """The --max-distance a search applies: as given, or --min-score's, sqrt(2 - 2 min_score), by the
    function the index computes a hit's distance from its score with (so that a hit whose score is min_score exactly is kept), here
    and through a service (its max_distance, the same cut as its min_score). -1 is no cut (a float32 score can lie
    just past -1). CliError when both are given, or for a score outside -1..1."""
    import index   # as _checked does (FAISS is loaded for --url searches too)

    if min_score is None:
        return max_distance
    if not -1 <= min_score <= 1:   # NaN too, as the service's
        raise CliError(f"--min-score must be a cosine similarity, -1..1, got {min_score}")
    if max_distance is not None:
        raise CliError(f"--max-distance {max_distance} and --min-score {min_score} are one cut in two units "
                       "(distance = sqrt(2 - 2 score)); keep one")
    return None if min_score == -1 else index.score_to_distance(min_score)


def _search_local(args, queries, single: bool, show, where, crop, like, unlike):
    """Answer the queries from the gallery in --data (or --milvus-uri): (queries with a label, of them those
    given that label, queries skipped), or (None, None, exit status) where one answer was given (the marks
    alone, or --together)."""
    import numpy as np

    import index

    embedder = g.embedder_for(args.model, args.data, args.gallery, args.milvus_uri)
    pddm = _reranker(embedder, args.rerank, args.k, args.offset) if args.rerank is not None else None
    store = g.open_store(args.data, True, embedder, gallery=args.gallery, milvus_uri=args.milvus_uri)
    filters = {"label": args.label, "max_distance": args.max_distance, "where": where}
    try:
        filters.update(_tuning(args))
        # with --rerank the PDDM re-orders the N nearest, and the offset skips the best of its order
        search = _searcher(store, like, unlike, args.gallery, args.group_by, args.group_size, args.exclude,
                           0 if pddm is not None else args.offset)
        if not args.images:   # the marks alone: 2 mean(liked) - mean(unliked), as the service's no-body search
            show("the marked items", None, search([None], args.k, **filters)[0])
            return None, None, 0
        if args.together:
            return None, None, _search_together(args, queries, embedder, store, pddm, search, show, filters, crop,
                                                like, unlike)
        agree = labelled = failed = 0
        for start in range(0, len(queries), 256):
            chunk, arrays, skipped = _model_inputs(queries[start:start + 256], embedder, crop, fatal=single)
            failed += skipped
            if not chunk:
                continue
            vecs = embedder.embed_arrays(np.stack(arrays))
            found = search(vecs, args.rerank or args.k, **filters)
            for (name, label), vec, hits in zip(chunk, vecs, found, strict=True):
                if pddm is not None:
                    hits = _rerank(store, pddm, vec, hits, args.k, args.offset)
                answer = show(name, label, hits)
                if label is not None:
                    labelled += 1
                    agree += answer == label
        return labelled, agree, failed
    except index.StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def _search_together(args, queries, embedder, store, pddm, search, show, filters: dict, crop, like, unlike) -> int:
    """--together: one query of every image (the unit mean of their vectors, or with --combine best each
    image's nearest items merged), answered once; the exit status (1: no image could be read)."""
    import numpy as np

    import index

    _, arrays, failed = _model_inputs(queries, embedder, crop, fatal=len(queries) == 1)
    if failed:
        print(f"{failed} of {len(queries)} images could not be read"
              + ("" if arrays else "; nothing to search with"), file=sys.stderr)
        if not arrays:
            return 1
    vecs = embedder.embed_arrays(np.stack(arrays))
    said = f"{len(arrays)} images together"
    if args.combine == "best" and len(vecs) > 1:   # each photo's offset + k nearest, merged
        wide = _searcher(store, like, unlike, args.gallery, None, 1, args.exclude)
        show(said, None, index.best_of(wide(vecs, args.offset + args.k, **filters), args.k, args.offset))
        return 0
    try:
        vec = index.mean_query(vecs)
    except ValueError:
        raise CliError(f"--together: the {len(arrays)} images cancel out (their mean is no direction to "
                       "search in); search them one by one") from None
    hits = search(vec[None], args.rerank or args.k, **filters)[0]
    if pddm is not None:
        hits = _rerank(store, pddm, vec, hits, args.k, args.offset)
    show(said, None, hits)
    return 0


def _model_inputs(queries, embedder, crop, fatal: bool):
    """([(name, label)], [model input array], how many skipped) of the queries read; one that cannot be read
    is said on stderr and skipped, or with `fatal` a CliError naming it."""
    from model import unreadable_reason

    kept, arrays, skipped = [], [], 0
    for name, label, read in queries:
        data = None
        try:
            data = read()
            arrays.append(g.model_input(data, embedder, crop, name))
            kept.append((name, label))
        except Exception as exc:  # noqa: BLE001  (one unreadable query is reported, not fatal)
            why = unreadable_reason(exc, data)
            if fatal:
                raise CliError(f"cannot read image {name}: {why}") from None
            skipped += 1
            print(f"skipped {name}: {why}", file=sys.stderr)
    return kept, arrays, skipped


def _check_groups(args) -> None:
    """--group-by and --group-size checked as the service checks group_by and group_size; CliError otherwise."""
    import index

    if args.group_by is None:
        if args.group_size != 1:
            raise CliError(f"--group-size {args.group_size} needs --group-by (label or metadata.KEY)")
        return
    try:
        index.check_group_by(args.group_by)
    except ValueError as exc:
        raise CliError(f"--{str(exc).replace('_', '-', 1)}") from None
    if args.rerank is not None:
        raise CliError("--rerank and --group-by do not go together: --rerank re-orders a fixed number of nearest "
                       "items, --group-by reads as many as the groups need")
    if not 1 <= args.group_size <= index.MAX_GROUP_SIZE:
        raise CliError(f"--group-size must be 1..{index.MAX_GROUP_SIZE}, got {args.group_size}")
    if args.k * args.group_size > index.MAX_GROUPED_RESULTS:
        raise CliError(f"-k {args.k} groups of --group-size {args.group_size} is {args.k * args.group_size} items; "
                       f"at most {index.MAX_GROUPED_RESULTS}")


def _read_together(queries) -> list[tuple[str, bytes]]:
    """(name, bytes) of every query image for --together that can be read; one that cannot is skipped,
    said on stderr (CliError naming it when it is the only one)."""
    photos = []
    for name, _, read in queries:
        try:
            photos.append((name, read()))
        except OSError as exc:
            if len(queries) == 1:
                raise CliError(f"cannot read image {name}: {exc}") from None
            print(f"skipped {name}: {exc}", file=sys.stderr)
    return photos


def _check_offset(args) -> None:
    """--offset checked as the service checks offset; CliError otherwise."""
    import index

    if args.offset < 0:
        raise CliError(f"--offset must be at least 0, got {args.offset}")
    if (args.offset + args.k) * (args.group_size if args.group_by else 1) > index.MAX_SEARCH_WINDOW:
        raise CliError(f"--offset {args.offset} + -k {args.k}" + (f" groups of --group-size {args.group_size}"
                                                                  if args.group_by else "") +
                       f": a search reads at most {index.MAX_SEARCH_WINDOW} items to answer")


def _searcher(store, like: list[str], unlike: list[str], gallery: str, group_by: str | None, group_size: int,
              exclude: list[str], offset: int = 0):
    """search(vecs, k, **filters): the k nearest hits of each query (or with group_by its k nearest groups)
    after the `offset` nearest, each query first refined by the --like/--unlike items, those and the --exclude
    ones left out, as the service's searches do (index.refine_queries, index.search_hits). CliError naming a
    marked id the gallery does not hold."""
    import index

    def search(vecs, k: int, **filters) -> list[list]:
        queries = vecs
        if like or unlike:
            try:
                queries = index.refine_queries(store, list(vecs), like, unlike)
            except KeyError as exc:
                raise CliError(f"--like/--unlike: no item with id(s) {exc.args[0][:5]} in gallery "
                               f"{gallery!r}") from None
            except ValueError as exc:   # a query the marks cancel out
                raise CliError(f"--like/--unlike: {exc}") from None
        return index.search_hits(store, queries, k, like + unlike + exclude, group_by, group_size, offset, **filters)
    return search


class _Answers:
    """show(name, label, hits) prints one query's answer and returns the label it gives: its nearest
    neighbour's, or with `classify` the neighbours' vote (None: unknown, counted in `unknown`)."""

    def __init__(self, args, single: bool):
        self.args, self.single, self.unknown = args, single, 0
        if args.classify:
            from index import vote
            self._vote = vote

    def __call__(self, name: str, label: str | None, hits: list) -> str | None:
        args = self.args
        if not args.classify:
            _print_hits(name, label, hits, args, self.single, args.rerank is not None)
            return hits[0].label if hits else None
        decided = self._vote(hits)
        self.unknown += decided.label is None
        _print_vote(name, label, decided, hits, args, self.single)
        return decided.label


def _search_summary(args, labelled: int, agree: int, failed: int, n: int, unknown: int) -> int:
    # With --json, stdout holds JSON Lines only: the summary lines go to stderr
    out = sys.stderr if args.json else sys.stdout
    if args.classify and n - failed > 1:
        answered = n - failed - unknown
        print(f"{answered} of {n - failed} queries classified ({answered / (n - failed):.3f}), {unknown} unknown",
              file=out)
    if labelled:
        what = "are classified as" if args.classify else "have a nearest neighbour of"
        print(f"{agree} of {labelled} queries with a label ({agree / labelled:.3f}) {what} that label", file=out)
    if failed:
        print(f"{failed} of {n} queries could not be read", file=sys.stderr)
    return 1 if failed == n else 0


def _print_hits(name: str, label: str | None, hits: list, args, single: bool, reranked: bool) -> None:
    import json

    groups = None
    if args.group_by:   # the hits come group after group; say which group each is in
        from index import group_hits, group_value
        groups = group_hits(hits, args.group_by)
    if args.json:
        rows = [h.__dict__ if groups is None else {**h.__dict__, "group": group_value(h, args.group_by)} for h in hits]
        print(json.dumps(rows, indent=2) if single else json.dumps({"query": name, "label": label, "results": rows}))
        return
    if not single:
        print(f"{name}" + (f"  (label {label})" if label is not None else ""))
    if reranked:
        print(f"re-ranked the {args.rerank} nearest candidates with the PDDM head")
    if not hits:
        print("no neighbours")
    rank = args.offset   # the next page goes on counting
    for value, members in groups if groups is not None else [(None, hits)]:
        if groups is not None:
            print(f"{args.group_by} = {json.dumps(value, ensure_ascii=False)}")
        for h in members:
            rank += 1
            print(f"{rank:>3}  {h.score:.4f}  d={h.distance:.4f}  {h.label or '-':<12} {h.id}")


def _print_vote(name: str, label: str | None, decided, hits: list, args, single: bool) -> None:
    import json

    if args.json:
        answer = {"label": decided.label, "confidence": decided.confidence, "votes": decided.votes,
                  "results": [h.__dict__ for h in hits]}
        print(json.dumps(answer, indent=2) if single else json.dumps({"query": name, "query_label": label, **answer}))
        return
    said = (f"{decided.label}  (confidence {decided.confidence:.2f}; votes "
            + ", ".join(f"{lb} {n}" for lb, n in decided.votes.items()) + ")") if decided.label is not None else \
        ("unknown  (no labelled gallery item" + (f" with a score of at least {args.min_score}"
                                                  if args.min_score is not None else f" within {args.max_distance}"
                                                  if args.max_distance is not None else "") + ")")
    print(said if single else f"{name}" + (f"  (label {label})" if label is not None else "") + f"  ->  {said}")


def _reranker(embedder, n: int, k: int, offset: int = 0):
    """The artifact's PDDM head for --rerank N (CliError without one, or when N < k + offset)."""
    import model

    if n < k + offset:
        at_least = f"-k {k} + --offset {offset}" if offset else f"-k {k}"
        raise CliError(f"--rerank {n} must be at least {at_least}: it is the number of nearest candidates re-ordered")
    pddm = model.PDDM.from_artifact(embedder.artifact)
    if pddm is None:
        raise CliError(f"--rerank: the model {embedder.model_id} has no PDDM head (train one with --loss pddm)")
    return pddm


def _rerank(store, pddm, query, hits: list, k: int, offset: int = 0) -> list:
    """The best k of `hits` by PDDM score against their stored vectors after the best `offset` (cosine score and
    distance kept)."""
    import numpy as np

    kept = [(h, it) for h, it in zip(hits, store.get_many([h.id for h in hits]), strict=True) if it is not None]
    if not kept:
        return []
    order, _ = pddm.rerank(query, np.stack([it.vector for _, it in kept]))
    return [kept[i][0] for i in order[offset:offset + k]]
