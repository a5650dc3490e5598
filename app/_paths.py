"""Which requests are which, by method and path: open (no key, no rate limit), writes, gallery scans and probes.

The key check, the rate limit, the concurrency cap, the metrics and the OpenAPI document all decide from these,
on the path without its root path (route_path).
"""
from __future__ import annotations

from starlette.datastructures import QueryParams

DEFAULT_GALLERY = "default"   # the gallery of a request that names none (_service.DEFAULT_GALLERY)

METRICS_PATH = "/metrics"
# Paths that are never rate limited and never count against the concurrency cap, so that they answer under load.
PROBE_PATHS = frozenset({"/healthz", "/readyz", METRICS_PATH})
# Paths that never need a key. Not /metrics: it names every gallery and its size, which GET /galleries shows
# only to those who may read, so it takes the key as reads do (AuthMiddleware); the probes stay open.
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc",
                         "/favicon.ico"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_open_path(path: str) -> bool:
    """The liveness and readiness probes, docs, the search page and its static files: no key, no rate limit."""
    return path in _OPEN_PATHS or path.startswith("/static/")


def is_write(method: str, path: str) -> bool:
    """Writes change a gallery: POST/PUT/PATCH/DELETE on /index and below, and on /galleries/<name>."""
    return method in _WRITE_METHODS and (path == "/index" or path.startswith(("/index/", "/galleries/")))


def is_gallery_scan(path: str) -> bool:
    """GET /duplicates searches a whole gallery with each of its items: an operator's tool that costs seconds
    of CPU, so it takes the key as writes do."""
    return path.rstrip("/") == "/duplicates"


def is_backup(path: str) -> bool:
    """GET /galleries/<name>/backup hands over every item of a gallery at once: it takes the key as writes do,
    and a key that may only read may not take it."""
    return path.startswith(_GALLERY_PREFIX) and path.endswith(_BACKUP_SUFFIX) and \
        "/" not in path[len(_GALLERY_PREFIX):-len(_BACKUP_SUFFIX)]


# Routes that read or write no one gallery: the galleries a key is limited to do not decide them (/metrics, which
# counts every gallery, is refused to such keys by AuthMiddleware where reads need a key).
_NO_GALLERY_PATHS = frozenset({"/embed", METRICS_PATH})
GALLERY_LIST_PATH = "/galleries"
_GALLERY_PREFIX = "/galleries/"
_BACKUP_SUFFIX = "/backup"


def galleries_named(path: str, query: QueryParams) -> list[str] | None:
    """The galleries a request asks for: the name in /galleries/{name} (and /galleries/{name}/backup), else every
    value of the `gallery` query parameter (each, so that a repeated one, which the route refuses, cannot pass with
    one allowed name), else the default gallery; None for a request on no one gallery (/embed, /metrics, the list
    of galleries). `query` is parsed as the routes parse it (Starlette's QueryParams), and `path` is decoded as
    they match it."""
    if is_backup(path):
        return [path[len(_GALLERY_PREFIX):-len(_BACKUP_SUFFIX)]]
    if path.startswith(_GALLERY_PREFIX):
        name = path[len(_GALLERY_PREFIX):]
        return [name[:-1] if name.endswith("/") else name]   # a trailing / is redirected to the name
    if path.rstrip("/") in _NO_GALLERY_PATHS or path.rstrip("/") == GALLERY_LIST_PATH:
        return None
    return query.getlist("gallery") or [DEFAULT_GALLERY]
