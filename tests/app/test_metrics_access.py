"""/metrics names every gallery and its size (simsearch_gallery_items{gallery=...}): where reads need a key
(SIMSEARCH_REQUIRE_KEY_FOR_READS), it needs one too, a key not limited to some galleries (read-only keys are
fine), sent as X-API-Key or as Prometheus sends its credentials (`Authorization: Bearer`); it is still never rate
limited, and the liveness and readiness probes stay open. Where reads are open it stays open: GET /galleries
shows the same to anyone there. Over a real `simsearch serve`."""
from __future__ import annotations

import httpx
import pytest

from .conftest import start_server, stop_server

FULL, READ, SHOP, WRONG = "metrics-full-k1", "metrics-read-k2", "metrics-shop-k3", "metrics-wrong-k4"
RATE = 4   # requests a minute per key: a scrape must not take from them
SIZES = 'simsearch_gallery_items{gallery="acme-corp"}'


@pytest.fixture(scope="module")
def closed(hybrid1_artifact, tmp_path_factory):
    """Keys from a file (full, read-only, limited to `shop`), keys needed for reads, RATE requests a minute; the
    gallery acme-corp made."""
    work = tmp_path_factory.mktemp("metrics-access")
    (work / "keys").write_text(f"{FULL}\n{READ} read\n{SHOP} galleries=shop\n")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_REQUIRE_KEY_FOR_READS": "true", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": str(RATE)},
                        work, ["--api-key-file", str(work / "keys")])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.put("/galleries/acme-corp", headers={"X-API-Key": FULL}).status_code == 201
            yield c
    finally:
        stop_server(live)


def _error(r: httpx.Response) -> dict:
    assert "acme-corp" not in r.text, r.text
    return r.json()["error"]


def test_metrics_need_a_key_where_reads_do_and_name_no_gallery_without_one(closed):
    assert closed.get("/galleries").status_code == 401   # as the list of galleries
    r = closed.get("/metrics")
    assert r.status_code == 401 and _error(r)["code"] == "missing_api_key", r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert closed.head("/metrics").status_code == 401
    r = closed.get("/metrics", headers={"X-API-Key": WRONG})
    assert r.status_code == 403 and _error(r)["code"] == "invalid_api_key", r.text


def test_a_key_limited_to_some_galleries_is_refused_the_metrics_of_every_gallery(closed):
    r = closed.get("/metrics", headers={"X-API-Key": SHOP})
    assert r.status_code == 403 and _error(r)["code"] == "key_scope", r.text
    assert "names every gallery" in r.json()["error"]["message"]
    assert closed.get("/galleries", headers={"X-API-Key": SHOP}).json()["galleries"] == []   # as it is hidden there


@pytest.mark.parametrize("headers", [{"X-API-Key": READ}, {"Authorization": f"Bearer {READ}"},
                                     {"Authorization": f"bearer {FULL}"}], ids=["x-api-key", "bearer", "full"])
def test_a_read_key_scrapes_the_metrics_as_prometheus_sends_it(closed, headers):
    r = closed.get("/metrics", headers=headers)
    assert r.status_code == 200 and SIZES in r.text, r.text[:500]
    assert r.headers["content-type"].startswith("text/plain")


def test_the_probes_stay_open_and_scrapes_are_never_rate_limited(closed):
    for path in ("/healthz", "/readyz"):
        assert closed.get(path).status_code == 200, path
        assert closed.head(path).status_code == 200, path
    for _ in range(RATE + 3):
        assert closed.get("/metrics", headers={"X-API-Key": READ}).status_code == 200
    # the read key's own requests are limited: the scrapes took none of them
    statuses = [closed.get("/galleries", headers={"X-API-Key": READ}).status_code for _ in range(RATE + 1)]
    assert statuses[:RATE] == [200] * RATE and statuses[RATE] == 429, statuses


def test_metrics_stay_open_where_reads_need_no_key(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        names = [g["name"] for g in c.get("/galleries").json()["galleries"]]   # shown to anyone: reads are open
        assert names
        r = c.get("/metrics")
        assert r.status_code == 200 and "simsearch_requests_total" in r.text, r.text[:300]
        assert all(f'simsearch_gallery_items{{gallery="{name}"}}' in r.text for name in names), (names, r.text)
        assert c.get("/metrics", headers={"X-API-Key": "not-a-key"}).status_code == 200   # as a read with a wrong key


def test_the_openapi_document_declares_the_401_and_each_403_metrics_can_answer_where_reads_need_a_key(closed):
    op = closed.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "401" in op["responses"] and op.get("security"), op
    forbidden = op["responses"]["403"]["description"]
    assert "invalid_api_key" in forbidden and "/metrics names every gallery" in forbidden, forbidden
