"""deploy/nginx.conf, the compose gateway, run by a real nginx (Debian's, which scripts/test installs) in
front of a real `simsearch serve`. Only what the compose network supplies is changed: the service's
address instead of its DNS name (Debian's nginx predates `resolve`), a free port, files in a temporary
folder."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, free_port, start_server, stop_server

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx here (scripts/test installs Debian's nginx-light)")


def gateway_conf(work: Path, service_port: int, port: int, more: str = "") -> Path:
    """deploy/nginx.conf with the stand-ins for the compose network, listening on `port` and passing requests to
    the service on `service_port`; `more` is put at the end of its http block (another server, say)."""
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    swaps = [("pid /tmp/nginx.pid;", f"pid {work}/nginx.pid;"),
             ("include /tmp/simsearch-resolver.conf;", ""),
             ("include /tmp/simsearch-cors.conf;", f"include {work}/cors.conf;"),
             ("server simsearch:8000 resolve;", f"server 127.0.0.1:{service_port};"),
             ("server simsearch-search:8000 resolve;", f"server 127.0.0.1:{service_port};"),
             ("listen 8080;", f"listen 127.0.0.1:{port};"),
             ("access_log /dev/stdout main;", f"access_log {work}/access.log main;")]
    for old, new in swaps:
        assert old in conf, f"deploy/nginx.conf no longer holds {old!r}: update this test's stand-ins"
        conf = conf.replace(old, new)
    conf = re.sub(r"/tmp/(\w+_temp)", lambda m: f"{work}/{m.group(1)}", conf)
    if more:
        end = conf.rstrip().rfind("}")   # the http block's
        conf = conf[:end] + more + "\n" + conf[end:]
    (work / "cors.conf").write_text('map $http_origin $cors_origin {\n    default "";\n}\n')
    path = work / "nginx.conf"
    path.write_text(conf)
    return path


@pytest.fixture
def gateway(hybrid1_artifact, tmp_path):
    """A service with a per-client limit of 20 requests a minute, trusting every proxy's
    X-Forwarded-For as the compose file has it, behind the gateway: (gateway URL, service)."""
    service = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                            "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "20", "FORWARDED_ALLOW_IPS": "*"}, tmp_path,
                           ["--log-level", "info"])   # the access lines, with the client's address
    try:
        work = gateway_folder(tmp_path)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_nginx(gateway_conf(work, service.port, port), work, url + "/healthz"):
            yield url, service
    finally:
        stop_server(service)


def gateway_folder(tmp_path: Path) -> Path:
    """A folder for nginx's configuration, logs and temporary files."""
    work = tmp_path / "gateway"
    work.mkdir()
    os.chmod(work, 0o777)   # nginx's workers run as nobody when it is started as root
    return work


@contextmanager
def running_nginx(conf: Path, work: Path, probe: str):
    """nginx run with `conf` until the block ends, once `probe` (a URL through it) answers 200."""
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert nginx.poll() is None, nginx.stdout.read().decode(errors="replace")
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the gateway did not answer {probe} in 30 s"
            time.sleep(0.1)
        yield nginx
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_a_client_behind_the_gateway_cannot_choose_the_address_its_rate_limit_is_counted_by(gateway):
    url, service = gateway
    with httpx.Client(base_url=url, timeout=10) as client:
        # each request claims another address: they are still one client, and the 21st is refused
        statuses = [client.get("/index?limit=1", headers={"X-Forwarded-For": f"10.9.{i}.1"}).status_code
                    for i in range(30)]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {429}, statuses
    log = service.log.read_text(errors="replace")
    assert '127.0.0.1:0 - "GET /index?limit=1' in log and "10.9." not in log, log[-2000:]   # nor is it logged


def test_the_gateway_keeps_its_port_in_the_services_redirects_and_refuses_a_large_body_in_json(gateway):
    url, _ = gateway
    r = httpx.get(url + "/docs/", follow_redirects=False)
    assert r.status_code in (301, 307, 308) and r.headers["location"] == url + "/docs", r.headers
    big = httpx.post(url + "/index", content=b"\0" * (12 * 1024 * 1024),
                     headers={"Content-Type": "application/octet-stream"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large", big.text
    assert httpx.get(url + "/index?limit=1").status_code == 200   # and it passes on what fits


def test_a_restore_larger_than_the_gateways_body_limit_reaches_the_service_whose_limit_counts(gateway):
    url, _ = gateway
    body = b"\0" * (12 * 1024 * 1024)   # past the 11 MB every other location takes: the service reads and judges it
    r = httpx.put(url + "/galleries/restored/backup", content=body, headers={"Content-Type": "application/vnd.sqlite3"},
                  timeout=60)
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_a_store", r.text
    assert [g["name"] for g in httpx.get(url + "/galleries").json()["galleries"]] == ["default"]   # none made


def test_a_backup_waits_past_the_gateways_read_timeout_for_its_copy_while_other_requests_do_not(tmp_path):
    """The backup's location waits up to 600 s for its first byte (the service makes and checks the copy first);
    shown with the gateway's other read timeouts cut to 1 s and a stand-in service that answers after 2 s, since
    a real copy that outlasts 60 s needs tens of millions of items."""
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(2)
            body = b"SQLite format 3\0" + b"x" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        work = gateway_folder(tmp_path)
        port = free_port()
        conf = gateway_conf(work, slow.server_address[1], port)
        text = conf.read_text()
        assert text.count("proxy_read_timeout 60s;") == 1
        conf.write_text(text.replace("proxy_read_timeout 60s;", "proxy_read_timeout 1s;"))
        url = f"http://127.0.0.1:{port}"
        nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work), "-g", "daemon off;"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:   # the gateway is up once it answers at all (the stand-in answers everything slowly)
                assert nginx.poll() is None, nginx.stdout.read().decode(errors="replace")
                try:
                    httpx.get(url + "/index", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the gateway did not start in 30 s"
                    time.sleep(0.1)
            backup = httpx.get(url + "/galleries/shoes/backup", timeout=30)
            assert backup.status_code == 200 and backup.content.startswith(b"SQLite format 3"), backup.text[:200]
            other = httpx.get(url + "/index", timeout=30)
            assert other.status_code == 503 and other.json()["error"]["code"] == "unavailable", other.text
        finally:
            nginx.terminate()
            nginx.wait(10)
    finally:
        slow.shutdown()
