"""Benchmark variant (never imported by the project): the service without the forty-fifth session's two
per-request checks, the query-parameter check (a router dependency) and the header peek for images slow to
decode, for their cost in bench_http.py beside the code as it is."""
import sys

import app._routes as _routes

for _route in _routes.router.routes:   # the app copies these routes (with their dependencies) when it is made
    _route.dependencies = [d for d in _route.dependencies if d.dependency is not _routes._known_query_only]
_routes.slow_to_decode = lambda *args, **kwargs: False
sys.stderr.write("bench variant no_request_checks active\n")
