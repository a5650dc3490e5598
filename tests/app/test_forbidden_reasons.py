"""Each 403 the service gives says its real reason, and /openapi.json declares 403 on exactly the operations that
can answer it, with the reasons each can have: a wrong key (`invalid_api_key`) where the operation needs a key, a
read-only key on a write and a gallery-limited key on another gallery (`key_scope`) only with a key file. Over a
real `simsearch serve`: every 403 kind is provoked, and its body's code and reason are those its operation
declares."""
from __future__ import annotations

import httpx
import pytest

from .conftest import start_server, stop_server

FULL, READ, SHOP, WRONG = "full-key-f1", "read-key-f2", "shop-key-f3", "wrong-key-f4"


def _serve(artifact, work, env: dict[str, str], args: list[str] = ()):
    return start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", **env}, work, list(args))


def _declared_403(spec: dict, method: str, path: str) -> str | None:
    """The description of the 403 the operation declares (None: it declares none)."""
    forbidden = spec["paths"][path][method]["responses"].get("403")
    return None if forbidden is None else forbidden["description"]


def _refused(r: httpx.Response, code: str) -> str:
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


@pytest.fixture(scope="module")
def key_file_server(hybrid1_artifact, tmp_path_factory):
    """Keys from a file: a full key, a read-only key, a key limited to the default gallery; reads open."""
    work = tmp_path_factory.mktemp("forbidden")
    (work / "keys").write_text(f"{FULL}\n{READ} read\n{SHOP} galleries=default\n")
    live = _serve(hybrid1_artifact, work, {}, ["--api-key-file", str(work / "keys")])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            yield c, c.get("/openapi.json").json()
    finally:
        stop_server(live)


def test_a_wrong_key_on_a_write_is_refused_as_not_one_of_the_keys_as_the_write_declares(key_file_server):
    c, spec = key_file_server
    message = _refused(c.delete("/index/absent", headers={"X-API-Key": WRONG}), "invalid_api_key")
    assert message == "the API key sent is not one of the service's keys"
    declared = _declared_403(spec, "delete", "/index/{id}")
    assert "`invalid_api_key`" in declared and "not one of the service's keys" in declared


def test_a_read_only_key_on_a_write_is_refused_by_its_scope_as_the_write_declares(key_file_server):
    c, spec = key_file_server
    message = _refused(c.delete("/index/absent", headers={"X-API-Key": READ}), "key_scope")
    assert "may read only" in message and "is a write" in message
    declared = _declared_403(spec, "delete", "/index/{id}")
    assert "may only read (`KEY read` in the key file) and this request needs one that may write (`key_scope`)" \
        in declared
    message = _refused(c.put("/galleries/socks", headers={"X-API-Key": READ}), "key_scope")
    assert "`KEY read`" in _declared_403(spec, "put", "/galleries/{name}")


def test_a_read_only_key_on_a_backup_is_refused_by_its_scope_as_the_backup_declares(key_file_server):
    c, spec = key_file_server
    message = _refused(c.get("/galleries/default/backup", headers={"X-API-Key": READ}), "key_scope")
    assert "needs a key that may write the gallery" in message
    declared = _declared_403(spec, "get", "/galleries/{name}/backup")
    assert "`invalid_api_key`" in declared and "`key_scope`" in declared
    _refused(c.get("/galleries/default/backup", headers={"X-API-Key": WRONG}), "invalid_api_key")


def test_a_gallery_limited_key_on_another_gallery_is_refused_by_its_scope_as_reads_and_writes_declare(key_file_server):
    c, spec = key_file_server
    message = _refused(c.get("/index", params={"gallery": "hats"}, headers={"X-API-Key": SHOP}), "key_scope")
    assert "may not use the gallery 'hats'" in message
    message = _refused(c.post("/search", params={"gallery": "hats"}, json={"vector": [1.0]},
                              headers={"X-API-Key": SHOP}), "key_scope")
    for method, path in (("get", "/index"), ("post", "/search"), ("delete", "/index/{id}"), ("get", "/duplicates")):
        assert "`KEY galleries=...` in the key file) and this request is on another (`key_scope`)" in \
            _declared_403(spec, method, path), (method, path)


def test_a_read_declares_no_wrong_key_reason_when_reads_need_no_key_and_is_served_with_one(key_file_server):
    c, spec = key_file_server
    assert c.get("/index", headers={"X-API-Key": WRONG}).status_code == 200   # served as a request without a key
    declared = _declared_403(spec, "get", "/index")
    assert "invalid_api_key" not in declared and "`KEY read`" not in declared
    # a scan needs the key as writes do: both reasons of a read on a gallery, and the wrong key's
    _refused(c.get("/duplicates", headers={"X-API-Key": WRONG}), "invalid_api_key")
    assert "`invalid_api_key`" in _declared_403(spec, "get", "/duplicates")


def test_an_operation_on_no_gallery_that_needs_no_key_declares_no_403_and_answers_none(key_file_server):
    c, spec = key_file_server
    for key in (WRONG, READ, SHOP):
        assert c.post("/embed", headers={"X-API-Key": key}).status_code != 403
        assert c.get("/galleries", headers={"X-API-Key": key}).status_code == 200
    assert _declared_403(spec, "post", "/embed") is None and _declared_403(spec, "get", "/galleries") is None
    assert _declared_403(spec, "get", "/healthz") is None


def test_keys_of_the_variable_have_no_scope_so_only_a_wrong_key_on_a_write_is_declared(hybrid1_artifact, tmp_path):
    live = _serve(hybrid1_artifact, tmp_path, {"SIMSEARCH_API_KEY": FULL})
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            spec = c.get("/openapi.json").json()
            _refused(c.delete("/index/absent", headers={"X-API-Key": WRONG}), "invalid_api_key")
            assert c.get("/index", headers={"X-API-Key": WRONG}).status_code == 200
    finally:
        stop_server(live)
    assert _declared_403(spec, "delete", "/index/{id}") == \
        "the API key sent is not one of the service's keys (`invalid_api_key`)"
    assert _declared_403(spec, "get", "/index") is None and _declared_403(spec, "post", "/search") is None


def test_a_service_without_keys_declares_no_403_and_one_needing_keys_for_reads_declares_it_on_reads(make_settings):
    from app import create_app

    open_spec = create_app(make_settings()).openapi()
    assert not [(m, p) for p, item in open_spec["paths"].items() for m, op in item.items()
                if "403" in op.get("responses", {})]
    closed = create_app(make_settings(api_key=FULL, require_key_for_reads=True)).openapi()
    assert _declared_403(closed, "post", "/search") == \
        "the API key sent is not one of the service's keys (`invalid_api_key`)"
    assert _declared_403(closed, "get", "/galleries") is not None and _declared_403(closed, "get", "/healthz") is None


def test_a_route_that_checks_the_key_itself_keeps_the_403_it_declares_while_the_service_has_keys():
    from fastapi import FastAPI

    from app._answers import _ERRORS
    from app._openapi import fix_openapi

    app = FastAPI()
    own = {**_ERRORS[403], "description": "a key that may write the gallery is needed (`key_scope`)"}

    @app.get("/galleries/{name}/export", responses={403: own})
    def export(name: str) -> None: ...

    @app.get("/index", responses={403: _ERRORS[403]})
    def listing() -> None: ...

    keyed = fix_openapi(app.openapi(), keyed=True, key_for_reads=False, scoped=False)
    assert _declared_403(keyed, "get", "/galleries/{name}/export") == own["description"]
    assert _declared_403(keyed, "get", "/index") is None   # the generic 403 where nothing can answer it: gone
    app.openapi_schema = None
    without_keys = fix_openapi(app.openapi(), keyed=False, key_for_reads=False)
    assert _declared_403(without_keys, "get", "/galleries/{name}/export") is None
