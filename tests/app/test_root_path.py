"""The service under a path prefix (https://host/simsearch/): `simsearch serve --root-path /simsearch` behind an
ingress that strips the prefix, in front of the compose gateway (deploy/nginx.conf), and reached with the prefix
kept (a gateway that passes it on), all of them real: nginx and a `simsearch serve` process, over HTTP."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
import pytest

from .conftest import REPO, LiveServer, encode, free_port, pattern, start_server, stop_server
from .test_gateway import NGINX, gateway_conf, gateway_folder, running_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx here (scripts/test installs Debian's nginx-light)")

PREFIX = "/simsearch"
KEY = "root-path-test-key"

# What an operator's ingress does (docs/service.md, "Under a path prefix"): strips the prefix, keeps the Host.
_INGRESS = """
    server {{
        listen 127.0.0.1:{port};
        location {prefix}/ {{
            proxy_pass http://127.0.0.1:{gateway}/;
            proxy_set_header Host $http_host;
        }}
    }}
"""


@dataclass
class Prefixed:
    url: str            # the service through the ingress: http://127.0.0.1:PORT/simsearch
    origin: str         # http://127.0.0.1:PORT
    service: LiveServer


@pytest.fixture(scope="module")
def prefixed(hybrid1_artifact, tmp_path_factory):
    """`serve --root-path /simsearch` with an API key, behind the compose gateway, behind an ingress serving it
    under /simsearch/."""
    tmp = tmp_path_factory.mktemp("root-path")
    service = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp / "data"),
                            "SIMSEARCH_API_KEY": KEY}, tmp, ["--root-path", PREFIX, "--log-level", "info"])
    try:
        work = gateway_folder(tmp)
        gateway, ingress = free_port(), free_port()
        conf = gateway_conf(work, service.port, gateway, _INGRESS.format(port=ingress, prefix=PREFIX, gateway=gateway))
        origin = f"http://127.0.0.1:{ingress}"
        with running_nginx(conf, work, origin + PREFIX + "/healthz"):
            yield Prefixed(origin + PREFIX, origin, service)
    finally:
        stop_server(service)


def _image(seed: int) -> tuple[str, tuple[str, bytes, str]]:
    return ("file", (f"{seed}.jpg", encode(pattern(seed), "JPEG", quality=90), "image/jpeg"))


def test_under_a_prefix_a_write_needs_the_key_and_with_it_is_stored_found_and_its_thumbnail_served(prefixed):
    url = prefixed.url
    refused = httpx.post(url + "/index", files=[_image(7)], data={"id": "no-key"}, timeout=30)
    # the key check read the path as sent (/simsearch/index), which is no write: this was stored without a key
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key", refused.text
    stored = httpx.post(url + "/index", files=[_image(7)], data={"id": "prefixed-7"}, headers={"X-API-Key": KEY},
                        timeout=30)
    assert stored.status_code == 201, stored.text
    hits = httpx.post(url + "/search?k=1", files=[_image(7)], timeout=30).json()["results"]
    assert [h["id"] for h in hits] == ["prefixed-7"], hits
    thumb = httpx.get(url + "/index/prefixed-7/thumbnail", timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/"), thumb.text
    # GET /duplicates scans the gallery: the key, as writes
    scan = httpx.get(url + "/duplicates", timeout=30)
    assert scan.status_code == 401 and scan.json()["error"]["code"] == "missing_api_key", scan.text


def test_probes_answer_under_the_prefix_and_at_the_services_own_port_without_it(prefixed):
    for probe in (prefixed.url + "/readyz", prefixed.service.url + "/readyz"):
        r = httpx.get(probe, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ready", (probe, r.text)
    metrics = httpx.get(prefixed.url + "/metrics", timeout=30)
    # labelled by route template, the prefix not in it
    assert metrics.status_code == 200 and 'route="/readyz"' in metrics.text and PREFIX not in metrics.text


def test_docs_under_a_prefix_load_the_openapi_document_through_it_and_redirects_keep_it(prefixed):
    docs = httpx.get(prefixed.url + "/docs", timeout=30)
    assert docs.status_code == 200 and f"'{PREFIX}/openapi.json'" in docs.text, docs.text[:2000]
    document = httpx.get(prefixed.origin + PREFIX + "/openapi.json", timeout=30)
    assert document.status_code == 200, document.text[:500]
    # Swagger UI's "Try it out" sends its requests to the first server's URL
    assert document.json()["servers"][0]["url"] == PREFIX and "/search" in document.json()["paths"]
    moved = httpx.get(prefixed.url + "/docs/", follow_redirects=False, timeout=30)
    assert moved.status_code in (301, 307, 308) and moved.headers["location"] == prefixed.url + "/docs", moved.headers


def test_the_search_page_under_a_prefix_reaches_the_api_through_it(prefixed):
    page_url = prefixed.url + "/"
    page = httpx.get(page_url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:500]
    # a URL from the root (href="/...", fetch("/...")) would leave the prefix: the page's are relative
    rooted = re.findall(r"""(?:\b(?:href|src|action)\s*=\s*|\bfetch\(\s*)["'`]/(?!/)[^"'`]*""", page.text)
    assert not rooted, rooted
    for relative in ("readyz", "galleries", "index?limit=1", "docs"):
        r = httpx.get(urljoin(page_url, relative), timeout=30)
        assert r.status_code == 200, (relative, r.text[:500])


def test_a_gateway_that_passes_the_prefix_on_reaches_the_same_service(prefixed):
    # what an ingress without the strip sends (/simsearch/readyz as it is): uvicorn's own --root-path would read
    # it as /simsearch/simsearch/readyz, a 404; the service keeps a prefix that is there
    kept = prefixed.service.url + PREFIX
    ready = httpx.get(kept + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    refused = httpx.post(kept + "/index", files=[_image(9)], data={"id": "kept-9"}, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key", refused.text
    stored = httpx.post(kept + "/index", files=[_image(9)], data={"id": "kept-9"}, headers={"X-API-Key": KEY},
                        timeout=30)
    assert stored.status_code == 201, stored.text
    # a write through one way is read through the other (one service, one gallery)
    hits = httpx.post(prefixed.url + "/search?k=1", files=[_image(9)], timeout=30).json()["results"]
    assert [h["id"] for h in hits] == ["kept-9"], hits
    docs = httpx.get(kept + "/docs", timeout=30)
    assert docs.status_code == 200 and f"'{PREFIX}/openapi.json'" in docs.text, docs.text[:2000]
    assert httpx.get(kept + "/openapi.json", timeout=30).json()["servers"][0]["url"] == PREFIX
    page = httpx.get(kept + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:500]
    for static in (kept + "/static/index.html", prefixed.url + "/static/index.html"):   # the mounted files
        assert httpx.get(static, timeout=30).status_code == 200, static
    # an unknown path is named as the client sent it
    unknown = httpx.get(prefixed.url + "/nowhere", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == f"no route for GET {PREFIX}/nowhere"


def test_the_command_line_reaches_the_service_under_its_prefix(prefixed, tmp_path):
    stored = httpx.post(prefixed.url + "/index", files=[_image(11)], data={"id": "cli-11"},
                        headers={"X-API-Key": KEY}, timeout=30)
    assert stored.status_code == 201, stored.text
    query = tmp_path / "query.jpg"
    query.write_bytes(_image(11)[1][1])
    found = subprocess.run([sys.executable, "-m", "cli", "search", str(query), "--url", prefixed.url + "/", "-k", "1"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert found.returncode == 0 and "cli-11" in found.stdout, found.stdout + found.stderr
