"""The routes that say how the service is: /healthz, /readyz, /metrics; and the search page, GET /."""
from __future__ import annotations

from pathlib import Path as FsPath

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import FileResponse

from ._answers import _ERRORS
from ._errors import error_response
from ._params import _router
from ._service import Service

router = _router()

STATIC_DIR = FsPath(__file__).resolve().parent / "static"


@router.get("/healthz", tags=["probes"], summary="liveness: the process answers (HEAD too: the status alone)")
@router.head("/healthz", include_in_schema=False)   # as some load balancers probe; one operation in the OpenAPI
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["probes"], summary="readiness: model and index loaded (HEAD too: the status alone)",
            responses={503: _ERRORS[503]})
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request):
    service: Service = request.app.state.service
    if not service.ready:
        return error_response(503, "not_ready", f"the service is not ready: {service.reason}", {"Retry-After": "5"})
    return {"status": "ready", "model": service.model_id, "runtime": service.embedder.runtime,
            "index": service.store.spec, "read_only": service.settings.read_only}


@router.get("/metrics", tags=["probes"], summary="Prometheus metrics", response_class=Response,
            responses={401: _ERRORS[401], 403: _ERRORS[403]})   # where reads need a key (AuthMiddleware)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page():
    index_html = STATIC_DIR / "index.html"
    if not index_html.is_file():
        return error_response(404, "not_found", "the search page is not installed (app/static/index.html)")
    return FileResponse(index_html, media_type="text/html")
