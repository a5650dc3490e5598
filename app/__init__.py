"""app: the HTTP service (FastAPI). `create_app(settings)` builds it; `Settings` reads SIMSEARCH_*.

Run it with `simsearch serve`, or `uvicorn app:create_app --factory`.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from PIL import Image
from starlette.staticfiles import StaticFiles

from ._errors import JsonCORSMiddleware, install_error_handlers
from ._metrics import Metrics
from ._openapi import install_openapi
from ._access_log import RequestIdLogFilter, install_access_log_redaction
from ._auth import AuthMiddleware, KeyRing, parse_keys
from ._middleware import (BodyLimitMiddleware, ConcurrencyLimitMiddleware, HeadMiddleware, MetricsMiddleware,
                          RequestIdMiddleware, RootPathMiddleware, SecurityHeadersMiddleware, route_resolver)
from ._rate_limit import RateLimiter, SharedRateLimiter
from ._answers import POSITION_HEADER
from ._params import AFTER_HEADER
from ._routes import router
from ._routes_probes import STATIC_DIR
from ._service import Service, follows_writer
from ._settings import Settings

__all__ = ["RequestIdLogFilter", "Settings", "create_app"]

_DESCRIPTION = """Image similarity search. Add images to the gallery with `POST /index`, find the
nearest ones to an uploaded image with `POST /search` (filtered by `label` and by metadata, `where`), get
the vectors alone with `POST /embed`. Images are JPEG (MPO too), PNG, WebP, GIF, BMP, AVIF or HEIC/HEIF
(or fewer, as the operator sets), decided from their bytes. Writes need the API key (`X-API-Key` or
`Authorization: Bearer`) when one is configured. Every error is `{"error": {"code": ..., "message": ...,
"request_id": ...}}`; every answer carries its `X-Request-ID` (the caller's, when sent)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The model and index load in a thread after startup: /healthz answers at
    once, /readyz (and every route that needs them) answers 503 until they are loaded, with the
    reason when loading failed."""
    settings = settings or Settings()
    metrics = Metrics(follows=follows_writer(settings))
    service = Service(settings, metrics)
    # Pillow's own bomb check must not be stricter than ours (ours is per app, in decode_image).
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_pixels)

    limiter = _rate_limiter(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            metrics.close()
            if isinstance(limiter, SharedRateLimiter):
                limiter.close()

    app = FastAPI(title="simsearch", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    install_error_handlers(app)
    install_openapi(app, keyed=bool(settings.api_key) or settings.api_key_file is not None,
                    key_for_reads=settings.require_key_for_reads, read_only=settings.read_only)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    # A request passes root path -> security headers -> request id -> metrics -> CORS -> key and rate limit ->
    # concurrency cap -> body limit -> HEAD -> routes; they are added innermost first.
    app.add_middleware(HeadMiddleware)   # innermost: HEAD wherever GET, past the key check and limits as a GET
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=metrics,
                       timeout=settings.body_timeout_seconds, restore_limit=settings.max_restore_bytes)
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrency, metrics=metrics)
    keys = KeyRing(parse_keys(settings.api_key.get_secret_value()) if settings.api_key else [], settings.api_key_file)
    app.add_middleware(AuthMiddleware, keys=keys, require_key_for_reads=settings.require_key_for_reads,
                       limiter=limiter, metrics=metrics)
    if settings.cors_origin_list():
        # Outside the key check: a browser's preflight carries no key; and the refusals inside (401, 413,
        # 429) get the CORS headers, so that the calling page can read why.
        app.add_middleware(JsonCORSMiddleware, allow_origins=settings.cors_origin_list(),
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID", AFTER_HEADER],
                           expose_headers=["X-Request-ID", "Retry-After", "Allow", POSITION_HEADER], max_age=600)
    app.add_middleware(MetricsMiddleware, metrics=metrics, resolve=route_resolver(app),
                       wrote=service.refusals.succeeded)
    app.add_middleware(RequestIdMiddleware)  # every answer, the middlewares' refusals too, has an id
    app.add_middleware(SecurityHeadersMiddleware)   # nosniff (and frame-ancestors on pages) on every answer
    if settings.root_path:   # outermost: the prefix put on (or kept), before any middleware reads a path
        app.add_middleware(RootPathMiddleware, root_path=settings.root_path)
    install_access_log_redaction()   # an API key put in a query string is not written to the access log
    return app


def _rate_limiter(settings: Settings) -> RateLimiter | SharedRateLimiter | None:
    if settings.rate_limit_per_minute <= 0:
        return None
    if settings.workers_dir is not None:   # several processes: one set of buckets for all
        return SharedRateLimiter(settings.workers_dir / "rate-limits.sqlite", settings.rate_limit_per_minute)
    return RateLimiter(settings.rate_limit_per_minute)
