"""The API called from another site's web page (SIMSEARCH_CORS_ORIGINS), in a real browser: headless
Chromium on a page served from another port (another origin) posts a PNG it drew to a real
`simsearch serve`. From an allowed origin the page reads the answers, the refusals (a missing key) and
the request id; from any other origin, and from any origin when the setting is off, the browser blocks
the call and the service stores nothing."""
from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from ._browser import make_driver, require_chromium
from .conftest import free_port, start_server, stop_server
from .test_api import png, upload

KEY = "cors-test-key"

# Draws a 32x32 PNG, posts it as a multipart `file` (and an `id` when given) with the headers given,
# and reports what the page could read: the status, the body, the X-Request-ID and X-Simsearch-Position
# headers, or the error.
_POST_DRAWN_PNG = """
const [url, headers, id, done] = arguments;
const canvas = document.createElement('canvas');
canvas.width = canvas.height = 32;
const ctx = canvas.getContext('2d');
ctx.fillStyle = 'rgb(200, 30, 30)'; ctx.fillRect(0, 0, 32, 32);
ctx.fillStyle = 'rgb(20, 20, 220)'; ctx.fillRect(8, 8, 12, 20);
canvas.toBlob(async (png) => {
  const form = new FormData();
  form.append('file', png, 'drawn.png');
  if (id) form.append('id', id);
  try {
    const r = await fetch(url, {method: 'POST', headers: headers, body: form});
    done({status: r.status, body: await r.text(), requestId: r.headers.get('X-Request-ID'),
          position: r.headers.get('X-Simsearch-Position')});
  } catch (e) {
    done({error: String(e)});
  }
}, 'image/png');
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Two static sites on two ports, two origins: (allowed, other)."""
    require_chromium()
    folder = tmp_path_factory.mktemp("site")
    (folder / "index.html").write_text("<!doctype html><title>another site</title><p>calls simsearch</p>\n")
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-m", "http.server", str(p), "--bind", "127.0.0.1",
                                 "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for p in ports]
    origins = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for origin in origins:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(origin + "/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
        yield origins
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)


@pytest.fixture(scope="module")
def browser(sites, tmp_path_factory):
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def _serve(artifact, work, **env):
    return start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", **env}, work)


def _call_from(browser, origin: str, url: str, headers: dict, id_: str | None = None) -> dict:
    browser.get(origin + "/")
    return browser.execute_async_script(_POST_DRAWN_PNG, url, headers, id_)


def test_a_page_of_an_allowed_origin_indexes_searches_and_reads_refusals_and_request_ids(
        browser, sites, hybrid1_artifact, tmp_path):
    allowed, other = sites
    server = _serve(hybrid1_artifact, tmp_path, SIMSEARCH_CORS_ORIGINS=f"https://photos.example.com, {allowed}")
    try:
        added = _call_from(browser, allowed, server.url + "/index", {"X-API-Key": KEY}, "drawn-1")
        assert added.get("status") == 201, added
        assert '"drawn-1"' in added["body"] and len(added["requestId"]) == 32 and added["position"] == "1.0"
        # read-your-writes: the header a replica needs passes the browser's preflight
        found = _call_from(browser, allowed, server.url + "/search?k=1", {"X-Simsearch-After": added["position"]})
        assert found.get("status") == 200 and '"id":"drawn-1"' in found["body"].replace(" ", ""), found
        refused = _call_from(browser, allowed, server.url + "/index", {}, "drawn-2")   # no key
        assert refused.get("status") == 401 and "X-API-Key" in refused["body"] and refused["requestId"], refused

        blocked = _call_from(browser, other, server.url + "/index", {"X-API-Key": KEY}, "drawn-3")
        assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
        assert httpx.get(server.url + "/index").json()["count"] == 1   # neither refused call stored anything
    finally:
        stop_server(server)


def test_without_the_setting_no_other_origin_can_call_the_api_from_a_browser(
        browser, sites, hybrid1_artifact, tmp_path):
    allowed, _ = sites
    server = _serve(hybrid1_artifact, tmp_path)
    try:
        blocked = _call_from(browser, allowed, server.url + "/index", {"X-API-Key": KEY}, "drawn-1")
        assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
        assert httpx.get(server.url + "/index").json()["count"] == 0
        # outside a browser nothing changes: CORS is the browser's rule, the key is the service's
        assert httpx.post(server.url + "/search?k=1", files=[upload(png(1))]).status_code == 200
    finally:
        stop_server(server)
