"""A filter a Milvus gallery of older rows cannot answer yet (a dotted path, before `simsearch index upgrade`) is a
422 over real HTTP on every route that filters, naming the command, never a 500 or a 503, and a DELETE by it
deletes nothing (the store refuses it: tests/index/test_milvus_layout.py)."""
from __future__ import annotations

import os
import signal

import httpx
import numpy as np
import pytest

pytest.importorskip("pymilvus")

from index import Item, MilvusConfig, MilvusStore  # noqa: E402

from ..index.test_milvus import _milvus_server  # noqa: E402
from ..index.test_milvus_layout import write_old  # noqa: E402
from .conftest import free_port, start_server, stop_server  # noqa: E402
from .test_api import png, upload  # noqa: E402

KEY = {"X-API-Key": "old-rows-key"}
PATH = '{"cam.make": {"$exists": false}}'


@pytest.fixture
def service_with_old_rows(hybrid1_artifact, tmp_path):
    port = free_port()
    milvus = _milvus_server(tmp_path / "milvus", port)
    uri = f"http://127.0.0.1:{port}"
    service = None
    try:
        service = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_MILVUS_URI": uri,
                                "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": KEY["X-API-Key"],
                                "SIMSEARCH_DATA_DIR": str(tmp_path / "data")}, tmp_path)
        ready = httpx.get(service.url + "/readyz", timeout=30).json()
        store = MilvusStore.open(MilvusConfig(uri=uri, model_id=ready["model"]))
        vec = np.ones(store.dim, np.float32) / np.sqrt(store.dim)
        write_old(store, [Item("old-cam", vec, None, {"cam": {"make": "canon"}})])
        store.close()
        yield service
    finally:
        if service is not None:
            stop_server(service)
        if milvus.poll() is None:
            os.killpg(milvus.pid, signal.SIGKILL)
            milvus.wait()


def test_a_path_filter_on_old_rows_is_a_422_naming_the_upgrade_on_every_route_and_deletes_nothing(
        service_with_old_rows):
    with httpx.Client(base_url=service_with_old_rows.url, timeout=60, headers=KEY) as c:
        answers = {"list": c.get("/index", params={"where": PATH}),
                   "facets": c.get("/facets", params={"field": "label", "where": PATH}),
                   "search": c.post("/search", params={"where": PATH}, files=[upload(png(1))]),
                   "search by id": c.post("/search/old-cam", params={"where": PATH}),
                   "delete": c.delete("/index", params={"where": PATH}),
                   "patch": c.patch("/index", params={"where": PATH}, json={"label": "x"})}
        for route, r in answers.items():
            assert r.status_code == 422, (route, r.status_code, r.text)
            error = r.json()["error"]
            code = "invalid_metadata" if route == "patch" else "invalid_parameter"   # PATCH names its store refusals so
            assert error["code"] == code and "simsearch index upgrade" in error["message"], (route, r.text)
        assert [it["id"] for it in c.get("/index").json()["items"]] == ["old-cam"]   # nothing deleted
