"""Which requests are which, by method and path: open (no key, no rate limit), writes, gallery scans and probes.

The key check, the rate limit, the concurrency cap, the metrics and the OpenAPI document all decide from these,
on the path without its root path (route_path).
"""
from __future__ import annotations

# Paths that never need a key, are never rate limited and never count against the concurrency cap.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_OPEN_PATHS = PROBE_PATHS | {"/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/favicon.ico"}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_open_path(path: str) -> bool:
    """Probes, docs, the search page and its static files: no key, no rate limit."""
    return path in _OPEN_PATHS or path.startswith("/static/")


def is_write(method: str, path: str) -> bool:
    """Writes change a gallery: POST/PUT/PATCH/DELETE on /index and below, and on /galleries/<name>."""
    return method in _WRITE_METHODS and (path == "/index" or path.startswith(("/index/", "/galleries/")))


def is_gallery_scan(path: str) -> bool:
    """GET /duplicates searches a whole gallery with each of its items: an operator's tool that costs seconds
    of CPU, so it takes the key as writes do."""
    return path.rstrip("/") == "/duplicates"
