"""PUT /galleries/{name}/backup over a real `simsearch serve`, for what hunt I found (/tmp/s51/I-report.md): a
replica serves a restored default gallery at once; a file carrying schema objects simsearch does not make, rows
it never writes, vectors of the wrong size or dimension, an unknown index kind or bytes past its pages is refused
(422 not_a_store naming what); a refused restore of a non-empty default gallery leaves its writes alone."""
from __future__ import annotations


import httpx
import numpy as np
import pytest

from .conftest import running, settings_for, start_server, stop_server


@pytest.fixture(scope="module")
def writer(hybrid1_artifact, tmp_path_factory):
    """A server without keys whose gallery `shoes` holds 40 items and the default gallery 3. Yields (server, its
    data folder, the model id, the dimension)."""
    work = tmp_path_factory.mktemp("restore-findings")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work, ["--log-level", "info"])
    try:
        listing = httpx.get(server.url + "/index").json()
        _write(server.url, listing["model"], listing["dimension"], "shoes", 40)
        _write(server.url, listing["model"], listing["dimension"], "default", 3)
        yield server, work / "data", listing["model"], listing["dimension"]
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()


def _write(url: str, model: str, dim: int, gallery: str, n: int, start: int = 0) -> None:
    vectors = np.random.default_rng(len(gallery) + start).normal(size=(n, dim))
    body = {"model": model, "items": [{"id": f"{gallery}-{start + i}", "vector": v.tolist(), "label": gallery,
                                       "metadata": {"n": i}} for i, v in enumerate(vectors)]}
    r = httpx.post(url + "/index", params={"gallery": gallery}, json=body, timeout=60)
    assert r.status_code == 201, r.text


def _backup(url: str, gallery: str) -> bytes:
    r = httpx.get(f"{url}/galleries/{gallery}/backup", timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def _restore(url: str, gallery: str, body, **kw) -> httpx.Response:
    return httpx.put(f"{url}/galleries/{gallery}/backup", content=body, timeout=60, **kw)


@pytest.mark.anyio
async def test_a_replica_serves_the_default_gallery_a_restore_replaced_at_its_next_request(writer, hybrid1_artifact):
    server, data, model, dim = writer
    async with running(settings_for(hybrid1_artifact, data, read_only=True)) as replica:
        assert (await replica.get("/index")).json()["count"] == 3
        r = _restore(server.url, "default", _backup(server.url, "shoes"), params={"replace": "true"})
        assert r.status_code == 201, r.text
        assert (await replica.get("/index")).json()["count"] == 40
        hits = (await replica.post("/search", params={"k": 3}, json={"vector": [1.0] * dim})).json()["results"]
        assert hits and all(h["id"].startswith("shoes-") for h in hits), hits
        assert (await replica.get("/readyz")).status_code == 200
