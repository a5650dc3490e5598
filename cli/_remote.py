"""`simsearch search --url`: the queries sent to a running service's POST /batch/search, many a request,
and its answers printed as the local search prints them."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from . import _http
from ._env import ClientEnv
from ._errors import CliError

MAX_FILES = 64                 # the service's default SIMSEARCH_MAX_FILES_PER_REQUEST
MAX_BYTES = 8 * 1024 * 1024    # under its default 10 MiB body limit
_TOO_BIG = ("too_many_parts", "body_too_large")   # the request, not one image: send fewer at once


def search(args, queries: list[tuple[str, str | None, Callable[[], bytes]]], single: bool,
           show: Callable[..., str | None]) -> tuple[int, int, int]:
    """Search the service at args.url with every query; show(name, label, hits) each answer, which
    returns the label it gives. Returns (queries with a label, of them those given that label, queries
    skipped)."""
    import httpx

    params = _params(args)
    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    agree = labelled = failed = 0
    limit = MAX_FILES
    try:
        with httpx.Client(base_url=url, headers=_headers(args, key), timeout=args.timeout) as client:
            todo = list(queries)
            while todo:
                chunk, size = [], 0
                while todo and len(chunk) < limit and (not chunk or size + _size_hint(todo[0]) <= MAX_BYTES):
                    name, label, read = todo.pop(0)
                    try:
                        data = read()
                    except OSError as exc:
                        if single:
                            raise CliError(f"cannot read image {name}: {exc}") from None
                        failed += 1
                        print(f"skipped {name}: {exc}", file=sys.stderr)
                        continue
                    chunk.append((name, label, data))
                    size += len(data)
                if not chunk:
                    continue
                answers, too_big = _ask(client, chunk, params, url, single)
                if too_big:   # put them back and send fewer a request
                    if len(chunk) == 1:
                        raise CliError(f"the service at {url} refused {chunk[0][0]}: {too_big}")
                    limit = max(1, len(chunk) // 2)
                    todo[:0] = [(n, lb, (lambda d=d: d)) for n, lb, d in chunk]
                    continue
                for (name, label, _), hits in zip(chunk, answers, strict=True):
                    if hits is None:
                        failed += 1
                        continue
                    answer = show(name, label, [SimpleNamespace(**h) for h in hits])
                    if label is not None:
                        labelled += 1
                        agree += answer == label
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    return labelled, agree, failed


def search_together(args, photos: list[tuple[str, bytes]], asked: int, show: Callable[..., str | None]) -> int:
    """Search the service at args.url with every photo as one query (its POST /search with several `file`
    parts: their mean), or with none, the marks alone (no body); show(name, None, hits) the answer. `asked`
    is how many images were given (those that could not be read are not in photos): an image the service
    cannot read is skipped, said on stderr, as the local search does. The exit status: 0, or 1 when no
    image could be read. CliError with the service's words when it refuses the search."""
    import httpx

    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, headers=_headers(args, key), timeout=args.timeout) as client:
            r = _search_with(client, args, photos) if photos or not asked else None
            if r is not None and r.status_code in (400, 413, 415) and _code(r) not in _TOO_BIG and len(photos) > 1:
                # one image the service cannot read fails the whole query: ask which, and search with the rest
                photos = [p for p in photos if _readable_by(client, p)]
                r = _search_with(client, args, photos) if photos else None
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    if asked > len(photos):
        print(f"{asked - len(photos)} of {asked} images could not be read" + ("" if photos else "; nothing to search "
                                                                                 "with"), file=sys.stderr)
        if not photos:
            return 1
    if r.status_code == 401:
        raise CliError(f"the service at {url} needs an API key for searches: pass --api-key or set "
                       f"SIMSEARCH_API_KEY ({_http.error_message(r)})")
    if r.status_code != 200:
        raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))
    name = f"{len(photos)} images together" if photos else "the marked items"
    show(name, None, [SimpleNamespace(**h) for h in r.json()["results"]])
    return 0


def _search_with(client, args, photos: list[tuple[str, bytes]]):
    files = [("file", (Path(name).name or "query", data)) for name, data in photos]
    return _http.request(client, "POST", "/search", params=_params(args), files=files or None)


def _readable_by(client, photo: tuple[str, bytes]) -> bool:
    """Whether the service reads this image (its POST /embed of it alone); when not, its reason on stderr."""
    name, data = photo
    r = _http.request(client, "POST", "/embed", files=[("file", (Path(name).name or "query", data))])
    if r.status_code in (400, 413, 415):
        print(f"skipped {name}: {_about_the_file(_http.error_message(r))}", file=sys.stderr)
        return False
    return True


# The service names a file by its place in the request ("file 0 ('q.jpg') is ...", "file 0 ('q.jpg'): ..."),
# which means nothing to a user who gave a path: the skip line names the path, and the reason says "it".
_FILE_IN_REQUEST = re.compile(r"file \d+(?: \('(?:[^'\\]|\\.)*'\)| \(\"(?:[^\"\\]|\\.)*\"\))?(: | )")


def _about_the_file(message: str) -> str:
    """The service's reason for refusing one file, in the words of a line that names the file already."""
    found = _FILE_IN_REQUEST.match(message)
    if found is None:
        return message
    return message[found.end():] if found.group(1) == ": " else "it " + message[found.end():]


def _params(args) -> dict:
    """The service's query parameters for these options (those not given left out)."""
    return {k: v for k, v in (("k", args.k), ("label", args.label), ("where", args.where),
                              ("max_distance", args.max_distance), ("rerank", args.rerank), ("crop", args.crop),
                              ("gallery", None if args.gallery == "default" else args.gallery),
                              ("like", args.like or None), ("unlike", args.unlike or None),
                              ("group_by", args.group_by), ("exclude", args.exclude or None),
                              ("group_size", args.group_size if args.group_by else None),
                              ("offset", args.offset or None),
                              ("combine", args.combine if args.combine != "mean" else None),
                              ("nprobe", args.nprobe), ("ef_search", args.ef_search),
                              ("exact", "true" if args.exact else None)) if v is not None}


def _headers(args, key: str) -> dict[str, str]:
    headers = {"X-API-Key": key} if key else {}
    if args.after:
        headers["X-Simsearch-After"] = args.after
    return headers


def _size_hint(query) -> int:
    # the bytes are read when the query joins a request; a file's size is known before
    name, _, read = query
    try:
        return Path(name).stat().st_size if Path(name).is_file() else 0
    except OSError:
        return 0


def _ask(client, chunk, params, url: str, single: bool) -> tuple[list, str]:
    """POST one request of queries: (each query's hits, or None where the service refused its image;
    the service's message when the request as a whole was too big)."""
    files = [("file", (Path(name).name or "query", data)) for name, _, data in chunk]
    r = _http.request(client, "POST", "/batch/search", params=params, files=files)
    if r.status_code == 200:
        return [q["results"] for q in r.json()["queries"]], ""
    code = _code(r)
    if r.status_code == 413 and code in _TOO_BIG:
        return [], _http.error_message(r)
    if r.status_code in (400, 413, 415) and len(chunk) > 1:
        # One image the service cannot read fails its whole request: ask one at a time, so that
        # only that one is skipped, with the service's reason.
        out = []
        for one in chunk:
            hits, too_big = _ask(client, [one], params, url, single)
            if too_big:
                print(f"skipped {one[0]}: {_about_the_file(too_big)}", file=sys.stderr)
            out.extend([None] if too_big else hits)
        return out, ""
    if r.status_code in (400, 413, 415) and not single:
        print(f"skipped {chunk[0][0]}: {_about_the_file(_http.error_message(r))}", file=sys.stderr)
        return [None], ""
    if r.status_code == 401:
        raise CliError(f"the service at {url} needs an API key for searches: pass --api-key or set "
                       f"SIMSEARCH_API_KEY ({_http.error_message(r)})")
    raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))


def _code(r) -> str:
    try:
        return json.loads(r.text)["error"]["code"]
    except Exception:  # noqa: BLE001
        return ""
