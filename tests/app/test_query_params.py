"""Query parameters: a parameter a route takes one value of is refused when given twice (FastAPI would take the
last, and hide a client's bug), over real HTTP, while the list ones (exclude, like, unlike) repeat; and the search
routes declare the parameters they share alike (app/_params.py, NeighbourQuery and the models made of it)."""
from __future__ import annotations

import gc
import weakref

import httpx
import pytest

from app import Settings, create_app
from app._params import NeighbourQuery

from .test_api import assert_error, png, upload

GALLERY = "query-params"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def items(server, client) -> list[str]:
    """Three items in a gallery of this module's own."""
    ids = ["qa", "qb", "qc"]
    r = client.post("/index", params={"gallery": GALLERY}, headers={"X-API-Key": server.key}, data={"id": ids},
                    files=[upload(png(seed)) for seed in (1, 2, 3)])
    assert r.status_code == 201, r.text
    return ids


@pytest.mark.parametrize("method, url, said", [
    ("POST", "/search?k=3&k=50", "'k' 2 times ('3', '50')"),
    ("POST", "/classify?k=1&k=1", "'k' 2 times ('1', '1')"),   # the same value twice: as much a client's bug
    ("POST", "/batch/search?vote=true&exclude=a&vote=false", "'vote' 2 times ('true', 'false')"),
    ("POST", "/search/qa?gallery=query-params&gallery=default", "'gallery' 2 times ('query-params', 'default')"),
    ("GET", "/index?limit=5&limit=7&limit=9", "'limit' 3 times ('5', '7', '9')"),
    ("GET", "/facets?field=label&field=metadata.x", "'field' 2 times ('label', 'metadata.x')"),
])
def test_a_single_valued_query_parameter_given_twice_is_a_422_naming_it_and_its_values(client, items, method, url,
                                                                                       said):
    files = [upload(png(4))] if method == "POST" and "/search/" not in url else None
    error = assert_error(client.request(method, url, files=files), 422, "invalid_parameter", said, "send each once")
    assert url.split("?")[0].replace("qa", "{id}") in error["message"]


def test_the_message_says_which_parameters_of_the_route_may_repeat(client):
    assert_error(client.post("/search?label=a&label=b", files=[upload(png(4))]), 422, "invalid_parameter",
                 "'label' 2 times", "only exclude, like, unlike may repeat")


def test_list_query_parameters_repeat_and_every_value_counts(client, items):
    def found(*params: tuple[str, str]) -> list[str]:
        r = client.post("/search/qa", params=[("gallery", GALLERY), ("k", "5"), *params])
        assert r.status_code == 200, r.text
        return [hit["id"] for hit in r.json()["results"]]

    assert sorted(found()) == ["qb", "qc"]   # qa itself is never its own neighbour
    assert found(("exclude", "qb")) == ["qc"]
    assert found(("exclude", "qb"), ("exclude", "qc")) == []
    assert found(("like", "qb"), ("like", "qc")) == []   # marked items are never returned: both were taken


def test_the_search_routes_declare_the_parameters_they_share_alike_in_openapi(tmp_path):
    """One declaration (NeighbourQuery) for POST /search, /search/{id} and /batch/search: each parameter listed on
    its own, with the same type, bounds and default on each route, and a description on each; crop and gallery the
    same on every route that takes them, combine on /search and /classify."""
    spec = create_app(Settings(data_dir=tmp_path / "data")).openapi()
    routes = ("/search", "/search/{id}", "/batch/search")
    declared = {path: {p["name"]: p for p in spec["paths"][path]["post"]["parameters"] if p["in"] == "query"}
                for path in routes}
    for name in [*NeighbourQuery.model_fields, "gallery"]:
        schemas = [{k: v for k, v in declared[path][name]["schema"].items() if k != "description"} for path in routes]
        assert schemas[0] == schemas[1] == schemas[2], (name, schemas)
        assert all(declared[path][name].get("description") for path in routes), name
    assert declared["/search/{id}"]["k"]["schema"] == {**declared["/search"]["k"]["schema"],
                                                       "default": 10, "minimum": 1, "maximum": 1000}
    assert "for each query" in declared["/batch/search"]["k"]["description"]
    assert "exclude" not in {p["name"] for p in spec["paths"]["/classify"]["post"]["parameters"]}
    for name, paths in {"crop": ("/search", "/batch/search", "/classify", "/embed", "/index"),
                        "gallery": ("/search", "/search/{id}", "/batch/search", "/classify", "/index"),
                        "combine": ("/search", "/classify")}.items():
        said = [next(p for p in spec["paths"][path]["post"]["parameters"] if p["name"] == name) for path in paths]
        assert all(p == said[0] for p in said), (name, said)
        assert said[0]["schema"].get("description") and said[0]["in"] == "query", said[0]


def test_the_check_keeps_what_each_route_declares_on_its_own_side_and_forgets_a_route_once_it_is_gone():
    """_known_query_only finds a route's parameters once, in a table of app._params keyed by the route's id, and
    sets nothing on Starlette's route object; a route dropped (a router made and let go) takes its entry with it,
    so that a new route given the same id is never checked against another's parameters."""
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from app._errors import install_error_handlers
    from app._params import _QUERY_OF, _router

    router = _router()

    @router.get("/things")
    async def things(limit: int = 1) -> dict:
        return {"limit": limit}

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    with TestClient(app) as c:
        assert_error(c.get("/things?nope=1"), 422, "invalid_parameter", "GET /things takes no query parameter 'nope'; "
                                                                         "it takes: limit")
        assert c.get("/things?limit=2").json() == {"limit": 2}
    route = router.routes[0]
    assert _QUERY_OF[id(route)] == {"limit": False}
    assert not [name for name in vars(route) if "simsearch" in name]
    gone, key = weakref.ref(route), id(route)
    del app, c, router, things, route
    gc.collect()
    assert gone() is None and key not in _QUERY_OF
