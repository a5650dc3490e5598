"""The HTTP routes, one router: the probes and the page, the search routes, the gallery routes and a gallery's
backup, included in this order, which decides which route a path matches first (GET /index/{id}/thumbnail before
GET /index/{id}). Each routes module's router refuses a query parameter its route does not declare (_params._router)."""
from __future__ import annotations

from fastapi import APIRouter

from . import _routes_backup, _routes_gallery, _routes_probes, _routes_search

router = APIRouter()
router.include_router(_routes_probes.router)
router.include_router(_routes_search.router)
router.include_router(_routes_gallery.router)
router.include_router(_routes_backup.router)
