"""Query parameters: a parameter a route takes one value of is refused when given twice (FastAPI would take the
last, and hide a client's bug), over real HTTP, while the list ones (exclude, like, unlike) repeat; and the search
routes declare the parameters they share alike (app/_params.py, SearchQuery)."""
from __future__ import annotations

import httpx
import pytest

from app import Settings, create_app
from app._params import SearchQuery

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
    """One declaration (SearchQuery) for POST /search, /search/{id} and /batch/search: each parameter listed on
    its own, with the same type, bounds and default on each route, and a description on each."""
    spec = create_app(Settings(data_dir=tmp_path / "data")).openapi()
    routes = ("/search", "/search/{id}", "/batch/search")
    declared = {path: {p["name"]: p for p in spec["paths"][path]["post"]["parameters"] if p["in"] == "query"}
                for path in routes}
    for name in SearchQuery.model_fields:
        schemas = [{k: v for k, v in declared[path][name]["schema"].items() if k != "description"} for path in routes]
        assert schemas[0] == schemas[1] == schemas[2], (name, schemas)
        assert all(declared[path][name].get("description") for path in routes), name
    assert declared["/search/{id}"]["k"]["schema"] == {**declared["/search"]["k"]["schema"],
                                                       "default": 10, "minimum": 1, "maximum": 1000}
    assert "for each query" in declared["/batch/search"]["k"]["description"]
    assert "exclude" not in {p["name"] for p in spec["paths"]["/classify"]["post"]["parameters"]}
