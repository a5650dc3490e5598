"""The HTTP contract against a real `simsearch serve` process: what /openapi.json declares is what the server
answers (a client generated from it parses every error it gets, and knows every header it is sent), and what a
405 says."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from app._paths import is_write

from .conftest import encode, pattern, start_server, stop_server

KEY = "contract-key"
MAX_BODY = 200_000
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("contract")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_MAX_BODY_BYTES": str(MAX_BODY),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_CORS_ORIGINS": ORIGIN},
                          work)
    r = httpx.post(server.url + "/index", headers={"X-API-Key": KEY}, data={"id": "known", "label": "cat"},
                   files=[("file", ("a.jpg", encode(pattern(1), "JPEG"), "image/jpeg"))])
    assert r.status_code == 201, r.text
    yield server
    stop_server(server)
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()


# ---- a small JSON Schema check (the subset the service's document uses) -------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _problems(value, schema: dict, spec: dict, at: str = "$") -> list[str]:
    """Where `value` breaks `schema` ($ref, anyOf, type, enum, required, properties, additionalProperties,
    items); [] when it fits."""
    if "$ref" in schema:
        return _problems(value, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec, at)
    if "anyOf" in schema:
        tried = [_problems(value, s, spec, at) for s in schema["anyOf"]]
        return [] if any(not t for t in tried) else [f"{at}: fits none of anyOf: {tried}"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        fits = any((k == "integer" and isinstance(value, int) and not isinstance(value, bool))
                   or (k == "number" and isinstance(value, (int, float)) and not isinstance(value, bool))
                   or (k in _TYPES and isinstance(value, _TYPES[k])) for k in kinds)
        if not fits:
            return [f"{at}: {value!r:.80} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    out = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{at}: {key!r} is missing" for key in schema.get("required", []) if key not in value]
        if schema.get("additionalProperties") is False:
            out += [f"{at}: {key!r} is not declared" for key in value if key not in props]
        for key, sub in props.items():
            if key in value:
                out += _problems(value[key], sub, spec, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += _problems(v, schema["items"], spec, f"{at}[{i}]")
    return out


# ---- the walk ---------------------------------------------------------------------------------------

_REQUIRED = {"field": "label"}   # a value for each required query parameter


def _provocations(method: str, path: str, op: dict) -> list[tuple[str, dict]]:
    """(what it is, httpx.request keyword arguments) of requests made to go wrong in every declared way that a
    single server can show: no key, a wrong key, an unknown query parameter, a malformed, an ahead and an empty
    X-Simsearch-After, an unknown id or gallery, an id with a line feed, a body not of a declared type, a body
    over the limit, and a JSON body where JSON is declared (and one of another model's vectors where they are)."""
    required = [p["name"] for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")]
    assert set(required) <= set(_REQUIRED), f"{method} {path}: give a value of {required} in _REQUIRED"
    url = path.replace("{id}", "nope").replace("{name}", "nope")
    url += "?" + "&".join(f"{n}={_REQUIRED[n]}" for n in required)
    key = {"X-API-Key": KEY}
    params = {p["name"] for p in op.get("parameters", [])}
    body_types = set(op.get("requestBody", {}).get("content", {}))
    out = [("no key", {"url": url + "&bogus=1"}),
           ("a wrong key", {"url": url, "headers": {"X-API-Key": "wrong"}}),
           ("an unknown query parameter", {"url": url + "&bogus=1", "headers": key})]
    if "X-Simsearch-After" in params:
        out += [("a malformed position", {"url": url, "headers": {**key, "X-Simsearch-After": "bad"}}),
                ("a position ahead", {"url": url, "headers": {**key, "X-Simsearch-After": "99999999999.0"}}),
                ("an empty position", {"url": url, "headers": {**key, "X-Simsearch-After": ""}})]
    if "gallery" in params and not (method == "post" and path == "/index"):   # a POST /index makes it
        out.append(("an unknown gallery", {"url": url, "params": {"gallery": "nope"}, "headers": key}))
    if "{id}" in path:
        out.append(("an id with a line feed", {"url": url.replace("nope", "a%0Ab", 1), "headers": key}))
    if method in ("post", "patch"):
        out += [("a text body", {"url": url, "content": b"hello", "headers": {**key, "Content-Type": "text/plain"}}),
                ("a body over the limit", {"url": url, "content": b"x" * (MAX_BODY + 1),
                                           "headers": {**key, "Content-Type": "application/octet-stream"}})]
    if "application/json" in body_types:
        out.append(("a JSON body", {"url": url, "json": {"vector": [0.0] * 4}, "headers": key}))
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        if "model" in schema.get("properties", {}):   # vectors: another model's are refused before they are read
            other = {**{name: _VECTORS_OF[name] for name in schema["required"]}, "model": "other@000000000000"}
            out.append(("another model's vectors", {"url": url, "json": other, "headers": key}))
    return out


_VECTORS_OF = {"vector": [0.0] * 4, "vectors": [[0.0] * 4], "items": [{"vector": [0.0] * 4}], "model": None}


def _succeed(url: str) -> list[tuple[str, str, str, httpx.Response]]:
    """(method, path, what, response) of a request that succeeds on each operation (and the thumbnail's 304), in
    an order that makes what the next one needs: the items h1 and h2 (and hv, written as a vector), the gallery
    `headers`."""
    key = {"X-API-Key": KEY}
    image = [("file", ("h.jpg", encode(pattern(5), "JPEG"), "image/jpeg"))]
    listing = httpx.get(url + "/index").json()
    unit = [1.0] + [0.0] * (listing["dimension"] - 1)
    vectors = {"model": listing["model"], "items": [{"id": "hv", "vector": unit, "label": "gone"}]}
    backup = httpx.get(url + "/galleries/default/backup", headers=key, timeout=30).content   # what PUT restores
    steps = [("get", "/healthz", "/healthz", {}), ("get", "/readyz", "/readyz", {}),
             ("get", "/metrics", "/metrics", {}),
             ("post", "/index", "/index", {"headers": key, "data": {"id": ["h1", "h2"], "label": ["dog", "gone"]},
                                           "files": image * 2}),
             ("post", "/index", "/index", {"headers": key, "json": vectors}),   # vectors, as JSON
             ("put", "/galleries/{name}", "/galleries/headers", {"headers": key}),   # 201: made
             ("put", "/galleries/{name}", "/galleries/headers", {"headers": key}),   # 200: there already
             ("post", "/index", "/index?gallery=headers", {"headers": key, "files": image}),
             ("get", "/index", "/index", {}), ("get", "/index/{id}", "/index/h1", {}),
             ("get", "/index/{id}/thumbnail", "/index/h1/thumbnail", {}),
             ("patch", "/index/{id}", "/index/h1", {"headers": key, "json": {"label": "cow"}}),
             ("patch", "/index", "/index?label=cow", {"headers": key, "json": {"metadata": {"seen": True}}}),
             ("post", "/search", "/search", {"files": image}), ("post", "/search/{id}", "/search/h1", {}),
             ("post", "/batch/search", "/batch/search", {"files": image}),
             ("post", "/classify", "/classify", {"files": image}),
             ("post", "/embed", "/embed", {"files": image}), ("get", "/duplicates", "/duplicates", {"headers": key}),
             ("get", "/facets", "/facets?field=label", {}), ("get", "/galleries", "/galleries", {}),
             ("get", "/galleries/{name}/backup", "/galleries/headers/backup", {"headers": key}),
             ("put", "/galleries/{name}/backup", "/galleries/restored/backup", {"headers": key, "content": backup}),
             ("delete", "/galleries/{name}", "/galleries/headers", {"headers": key}),
             ("delete", "/index", "/index?label=gone", {"headers": key}),
             ("delete", "/index/{id}", "/index/h1", {"headers": key})]
    out = []
    for method, path, target, request in steps:
        r = httpx.request(method.upper(), url + target, timeout=30, **request)
        assert r.status_code < 300, (method, target, r.text)
        out.append((method, path, "a request that succeeds", r))
        if path.endswith("/thumbnail"):
            again = httpx.get(url + target, headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304, again.text
            out.append((method, path, "If-None-Match of its ETag", again))
    return out


@pytest.fixture(scope="module")
def walked(live) -> list[tuple[str, str, str, httpx.Response]]:
    """(method, path, what, response) of the requests the contract is checked on: every operation of
    /openapi.json made to go wrong in each way _provocations knows, then made to succeed (_succeed)."""
    spec = httpx.get(live.url + "/openapi.json").json()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for what, request in _provocations(method, path, op):
                request["url"] = live.url + request["url"]
                out.append((method, path, what, httpx.request(method.upper(), timeout=30, **request)))
    return out + _succeed(live.url)


def test_every_error_a_route_answers_is_declared_in_openapi_with_the_body_it_has(live, walked):
    spec = httpx.get(live.url + "/openapi.json").json()
    wrong, seen = [], {}
    for method, path, what, r in walked:
        declared = spec["paths"][path][method]["responses"]
        seen.setdefault((method, path), set()).add(r.status_code)
        where = f"{method.upper()} {path}, {what}: {r.status_code}"
        if what == "a JSON body" and r.status_code == 415:
            wrong.append(f"{where}: application/json is declared, and refused")
        if what == "an empty position" and r.status_code == 400:
            wrong.append(f"{where}: an empty X-Simsearch-After is refused")
        if r.status_code < 400:
            continue
        if str(r.status_code) not in declared:
            wrong.append(f"{where} is not declared ({r.text[:120]})")
            continue
        schema = declared[str(r.status_code)].get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            wrong.append(f"{where}: declared with no JSON schema")
            continue
        named = schema.get("$ref", "").rsplit("/", 1)[-1]
        if "error" not in spec["components"]["schemas"].get(named, schema).get("required", []):
            wrong.append(f"{where}: declared as {named or schema}, which is not the error envelope")
        body = r.json()
        wrong += [f"{where}: {p}" for p in _problems(body, schema, spec)]
        # the service's envelope, whatever was declared (FastAPI's {"detail": ...} has no required keys)
        if body.get("error", {}).get("request_id") != r.headers.get("x-request-id"):
            wrong.append(f"{where}: the body's request_id is not the X-Request-ID header")
    assert not wrong, "\n".join(wrong)
    # every operation was shown to answer its 422 (a query parameter it does not take); writes their 401 and 403
    for (method, path), statuses in seen.items():
        assert 422 in statuses, (method, path, statuses)
        if "security" in spec["paths"][path][method]:
            assert {401, 403} <= statuses, (method, path, statuses)
    assert seen[("post", "/search/{id}")] >= {404, 413} and seen[("get", "/facets")] >= {400, 409}
    assert spec["components"]["schemas"]["ErrorDetail"]["properties"]["request_id"]
    assert "application/json" not in spec["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(spec["paths"]["/index"]["post"]["requestBody"]["content"])
    for op in (("post", "/index"), ("post", "/search"), ("post", "/batch/search")):
        assert 409 in seen[op], (op, seen[op])   # another model's vectors


# What HTTP itself puts on an answer (its framing, the date, the server's name): no API's to declare (and OpenAPI
# ignores a declared Content-Type)
_TRANSPORT_HEADERS = frozenset({"content-type", "content-length", "date", "server", "connection", "transfer-encoding"})


def _fits_header(value: str, schema: dict) -> bool:
    """Whether a header's value fits its declared schema (type integer or string, enum, pattern, minimum)."""
    if schema.get("type") == "integer":
        return value.isdigit() and int(value) >= schema.get("minimum", 0)
    if "enum" in schema and value not in schema["enum"]:
        return False
    return re.search(schema.get("pattern", ""), value) is not None   # a JSON Schema pattern: a search, as here


@pytest.fixture(scope="module")
def unready(tmp_path_factory) -> list[tuple[str, str, str, httpx.Response]]:
    """(method, path, what, response) of the answers a server gives that the live one does not: a 503 (a model
    file that is none: it never becomes ready) and a 429 (a rate limit of one request a minute)."""
    work = tmp_path_factory.mktemp("unready")
    (work / "broken.safetensors").write_bytes(b"not a model")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(work / "broken.safetensors"),
                           "SIMSEARCH_DATA_DIR": str(work / "data"), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "1"},
                          work, ready=False)
    try:
        answers = [("get", "/readyz", "no model", httpx.get(server.url + "/readyz")),
                   ("post", "/search", "no model", httpx.post(server.url + "/search")),
                   ("post", "/search", "the rate limit's second request", httpx.post(server.url + "/search"))]
    finally:
        stop_server(server)
    assert [r.status_code for _, _, _, r in answers] == [503, 503, 429], [r.text for _, _, _, r in answers]
    return answers


def _undeclared_headers(spec: dict, answers) -> tuple[list[str], set[tuple[str, str]]]:
    """What in `answers` ((method, path, what, response)) breaks `spec`'s declared statuses and headers, and the
    operations that answered a success."""
    components = spec["components"]["headers"]
    wrong, succeeded = [], set()
    for method, path, what, r in answers:
        where = f"{method.upper()} {path}, {what}: {r.status_code}"
        response = spec["paths"][path][method]["responses"].get(str(r.status_code))
        if response is None:
            wrong.append(f"{where}: the status is not declared")
            continue
        if r.status_code < 300:
            succeeded.add((method, path))
        declared = {name.lower(): components[h["$ref"].rsplit("/", 1)[1]] if "$ref" in h else h
                    for name, h in response.get("headers", {}).items()}
        sent = {name.lower() for name in r.headers} - _TRANSPORT_HEADERS
        wrong += [f"{where}: sends {name}, not declared" for name in sorted(sent - set(declared))]
        wrong += [f"{where}: {name} is declared as always sent, and was not" for name, h in sorted(declared.items())
                  if h.get("required") and name not in sent]
        wrong += [f"{where}: {name}: {r.headers[name]!r} is not {declared[name]['schema']}" for name in sorted(sent)
                  if name in declared and not _fits_header(r.headers[name], declared[name]["schema"])]
    return wrong, succeeded


def test_every_header_an_answer_carries_is_declared_in_openapi_for_its_operation_and_status(live, walked, unready):
    """A client generated from /openapi.json knows each header it can be sent (X-Request-ID, Retry-After, the
    position a write answers), and gets each one declared as always sent: a route that starts sending a header
    of its own, or stops sending one, fails here."""
    spec = httpx.get(live.url + "/openapi.json").json()
    components = spec["components"]["headers"]
    wrong, succeeded = _undeclared_headers(spec, walked + unready)
    assert not wrong, "\n".join(wrong)
    every = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert succeeded == every, f"no request that succeeds for {sorted(every - succeeded)}: add one to _succeed"
    for name in ("X-Request-ID", "Retry-After", "X-Simsearch-Position"):
        assert components[name]["description"] and components[name]["schema"], name


def test_a_read_only_service_declares_the_405_with_allow_that_each_write_answers(live, hybrid1_artifact):
    """A replica (SIMSEARCH_READ_ONLY) over the live server's gallery: its /openapi.json declares on every write
    the 405 `read_only` it answers, with the body and headers it has."""
    work = live.log.parent / "read-only"
    work.mkdir(exist_ok=True)
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact),
                           "SIMSEARCH_DATA_DIR": str(live.log.parent / "data"), "SIMSEARCH_READ_ONLY": "true",
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    try:
        spec = httpx.get(server.url + "/openapi.json").json()
        writes = [(m, p) for p, item in spec["paths"].items() for m in item if is_write(m.upper(), p)]
        image = [("file", ("w.jpg", encode(pattern(3), "JPEG"), "image/jpeg"))]
        answers = []
        for method, path in writes:
            target = path.replace("{id}", "known").replace("{name}", "default")
            query = "?label=cat" if target == "/index" and method in ("delete", "patch") else ""
            r = httpx.request(method.upper(), server.url + target + query, timeout=30,
                              **({"files": image} if method == "post" else
                                 {"json": {"label": "dog"}} if method == "patch" else {}))
            assert r.status_code == 405 and r.json()["error"]["code"] == "read_only", (method, target, r.text)
            answers.append((method, path, "a write to a read-only service", r))
    finally:
        stop_server(server)
    assert {(m.upper(), p) for m, p in writes} >= {("POST", "/index"), ("DELETE", "/index"), ("PATCH", "/index/{id}"),
                                                   ("PATCH", "/index"), ("DELETE", "/index/{id}")}, writes
    wrong, _ = _undeclared_headers(spec, answers)
    assert not wrong, "\n".join(wrong)
    for method, path, _, r in answers:
        declared = spec["paths"][path][method]["responses"]["405"]["content"]["application/json"]["schema"]
        assert not _problems(r.json(), declared, spec), (method, path, r.text)
    assert r.headers["allow"] == "GET, HEAD"


def test_openapi_declares_how_to_send_the_key_on_the_routes_that_need_it(live):
    spec = httpx.get(live.url + "/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerAuth"]["type"] == "http" and schemes["BearerAuth"]["scheme"] == "bearer"
    keyed = {(m.upper(), p) for p, item in spec["paths"].items() for m, op in item.items() if "security" in op}
    assert keyed == {("POST", "/index"), ("DELETE", "/index"), ("PATCH", "/index/{id}"), ("PATCH", "/index"),
                     ("DELETE", "/index/{id}"),
                     ("PUT", "/galleries/{name}"), ("DELETE", "/galleries/{name}"), ("GET", "/duplicates"),
                     ("GET", "/galleries/{name}/backup"), ("PUT", "/galleries/{name}/backup")}
    for method, path in keyed:   # and those are the ones the server refuses without it
        r = httpx.request(method, live.url + path.replace("{id}", "known").replace("{name}", "nope"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", (method, path)
    assert httpx.get(live.url + "/index/known").status_code == 200   # a read without: no security declared
    assert httpx.get(live.url + "/index", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert json.dumps(spec).count("HTTPValidationError") == 0


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/index", "DELETE, GET, HEAD, PATCH, POST"),
    ("PUT", "/index/known", "DELETE, GET, HEAD, PATCH"),
    ("PUT", "/index/known/thumbnail", "DELETE, GET, HEAD, PATCH"),   # also the item "known/thumbnail"'s path
    ("POST", "/healthz", "GET, HEAD"),
    ("OPTIONS", "/readyz", "GET, HEAD"),
    ("GET", "/embed", "POST"),
    ("POST", "/galleries/shoes", "DELETE, PUT"),
])
def test_a_405_names_in_allow_every_method_the_path_takes(live, method, path, allow):
    r = httpx.request(method, live.url + path, headers={"X-API-Key": KEY})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    assert r.headers["allow"] == allow and allow in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/index/known/thumbnail", "/index/known", "/index", "/galleries",
                                  "/facets?field=label", "/metrics", "/", "/healthz"])
def test_head_answers_wherever_get_does_with_the_get_headers_and_no_body(live, path):
    got, head = httpx.get(live.url + path), httpx.head(live.url + path)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    if path.endswith("thumbnail"):
        assert head.headers["content-length"] == str(len(got.content))


def test_a_cors_preflight_allows_the_bearer_header_the_api_takes_and_refuses_as_a_json_error(live):
    def preflight(origin=ORIGIN, method="POST", headers="authorization"):
        return httpx.options(live.url + "/index", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                           "Access-Control-Request-Headers": headers})

    for asked in ("authorization", "x-api-key", "content-type, x-request-id, x-simsearch-after"):
        r = preflight(headers=asked)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN, (asked, r.text)
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
    for method in ("PUT", "PATCH", "DELETE"):   # PUT /galleries/NAME makes a gallery from a page too
        assert preflight(method=method).status_code == 200, method
    r = httpx.post(live.url + "/index", headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"},
                   files=[("file", ("b.jpg", encode(pattern(2), "JPEG"), "image/jpeg"))], data={"id": "by-bearer"})
    assert r.status_code == 201 and r.headers["access-control-allow-origin"] == ORIGIN, r.text
    for refused, words in ((preflight(origin="https://evil.example"), ("origin", "evil.example")),
                           (preflight(headers="x-other"), ("headers", "x-other")),
                           (preflight(method="TRACE"), ("method", "TRACE"))):
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/json", refused.text
        error = refused.json()["error"]
        assert error["code"] == "cors_preflight_refused" and error["request_id"] == refused.headers["x-request-id"]
        assert all(w in error["message"] for w in words), error


def test_a_thumbnail_revalidates_by_etag_so_a_replaced_image_is_never_served_stale(live):
    def post(seed):
        r = httpx.post(live.url + "/index", headers={"X-API-Key": KEY}, data={"id": "thumb"},
                       files=[("file", ("t.jpg", encode(pattern(seed), "JPEG"), "image/jpeg"))])
        assert r.status_code == 201, r.text

    url = live.url + "/index/thumb/thumbnail"
    post(3)
    first = httpx.get(url)
    etag = first.headers["etag"]
    assert first.status_code == 200 and "no-cache" in first.headers["cache-control"] and etag.startswith('"')
    same = httpx.get(url, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    assert httpx.get(url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    post(4)   # the same id, another image
    again = httpx.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.content != first.content and again.headers["etag"] != etag


# ---- what a schema says a request takes is what the service takes (schemathesis's hunt: test_openapi_fuzz.py)

def _parameter_schemas(spec: dict, name: str) -> list[tuple[str, dict]]:
    return [(f"{m.upper()} {p}", prm["schema"]) for p, item in spec["paths"].items() for m, op in item.items()
            for prm in op.get("parameters", []) if prm["name"] == name]


def test_every_form_declares_the_file_part_it_cannot_go_without(live):
    # the `file` array had no minItems: a form with no part at all fitted the schema and was a 400 missing_file
    spec = httpx.get(live.url + "/openapi.json").json()
    forms = {f"{m.upper()} {p}": op["requestBody"]["content"]["multipart/form-data"]["schema"]
             for p, item in spec["paths"].items() for m, op in item.items()
             if "multipart/form-data" in op.get("requestBody", {}).get("content", {})}
    assert set(forms) == {"POST /search", "POST /classify", "POST /batch/search", "POST /embed", "POST /index"}
    for operation, form in forms.items():
        assert "file" in form["required"] and form["properties"]["file"]["minItems"] == 1, operation
        method, path = operation.split(" ")
        r = httpx.request(method, live.url + path, content=b"--b0--\r\n",   # a form of no parts
                          headers={"X-API-Key": KEY, "Content-Type": "multipart/form-data; boundary=b0"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file", (operation, r.text)


def test_the_position_a_read_takes_is_declared_as_the_pattern_it_must_fit(live):
    # X-Simsearch-After was any string: "null" fitted the schema and was a 400 invalid_position
    spec = httpx.get(live.url + "/openapi.json").json()
    declared = _parameter_schemas(spec, "X-Simsearch-After")
    assert len(declared) >= 9 and all(schema.get("pattern") for _, schema in declared), declared
    fits = re.compile(declared[0][1]["pattern"]).fullmatch
    assert all(schema["pattern"] == declared[0][1]["pattern"] for _, schema in declared)
    position = httpx.get(live.url + "/index").headers["X-Simsearch-Position"]
    for value in (position, ""):
        assert fits(value), value
        assert httpx.get(live.url + "/index", headers={"X-Simsearch-After": value}).status_code == 200, value
    for value in ("null", "1042", "1.2.3", "-1.2", "1,2", "1" * 20 + ".1"):
        assert not fits(value), value
        r = httpx.get(live.url + "/index", headers={"X-Simsearch-After": value})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_position", (value, r.text)


def test_a_grouping_and_a_facet_field_are_declared_as_the_pattern_they_must_fit(live):
    # group_by and /facets' field were any string: "" fitted the schema and was a 422 naming what to give
    spec = httpx.get(live.url + "/openapi.json").json()
    declared = _parameter_schemas(spec, "group_by") + [s for s in _parameter_schemas(spec, "field")
                                                       if s[0] == "GET /facets"]
    assert {op for op, _ in declared} >= {"POST /search", "POST /search/{id}", "POST /batch/search", "GET /facets"}
    assert all(schema.get("pattern") == declared[0][1]["pattern"] for _, schema in declared), declared
    fits = re.compile(declared[0][1]["pattern"]).fullmatch
    for value in ("label", "metadata.album", "metadata.cam.make"):
        assert fits(value), value
        assert httpx.get(live.url + "/facets", params={"field": value}).status_code == 200, value
    for value in ("", "labels", "metadata.", "metadata", "album"):
        assert not fits(value), value
        r = httpx.get(live.url + "/facets", params={"field": value})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", (value, r.text)
        r = httpx.post(live.url + "/search/known", params={"group_by": value})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", (value, r.text)


def test_a_header_parameter_is_declared_a_string_never_null(live):
    # `str | None` made X-Simsearch-After anyOf string/null: a client sent null as the text "null", a 400
    spec = httpx.get(live.url + "/openapi.json").json()
    headers = [(f"{m.upper()} {p} {prm['name']}", prm["schema"]) for p, item in spec["paths"].items()
               for m, op in item.items() for prm in op.get("parameters", []) if prm["in"] == "header"]
    assert len(headers) >= 9
    for where, schema in headers:
        assert schema.get("type") == "string" and "null" not in json.dumps(schema), (where, schema)
