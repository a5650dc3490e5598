"""Benchmark variant (never imported by the project): the service without the forty-fifth session's two
per-request checks, the query-parameter check (a router dependency: no parameter the route does not take, none
it takes one value of given twice) and the header peek for images slow to decode, for their cost in
bench_http.py beside the code as it is."""
import sys

import app._embedding as _embedding
import app._params as _params


async def _no_check(request) -> None:   # the check's own parameters, doing nothing
    return None


# The routers' routes hold the check in dependants FastAPI built when they were declared: the function itself
# is made to do nothing, as leaving it out of those routes would mean building them again.
_params._known_query_only.__code__ = _no_check.__code__
_embedding.slow_to_decode = lambda *args, **kwargs: False
sys.stderr.write("bench variant no_request_checks active\n")
