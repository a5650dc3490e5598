"""Over real HTTP: a named gallery whose store holds another model's vectors is a permanent 409 model_mismatch
naming both models and what to do (never a 503 to retry), and DELETE /galleries/NAME deletes it."""
from __future__ import annotations

import contextlib
import os
import signal

import httpx
import numpy as np
import pytest

import index
import model

from .conftest import free_port, start_server, stop_server
from .test_api import png, upload

OTHER_MODEL = "hybrid1-other@0123456789ab"


@contextlib.contextmanager
def _old_gallery(where: str, dim: int, tmp_path):
    """A gallery "old" of OTHER_MODEL's vectors (3 items) in a data folder or in a Milvus Lite server; the
    settings that serve that data folder or that Milvus."""
    vectors = np.eye(dim, dtype=np.float32)[:3]
    items = [index.Item(f"i{k}", v, None, {}) for k, v in enumerate(vectors)]
    if where == "folder":
        with index.Store.open(index.StoreConfig(index.gallery_path(tmp_path / "data", "old"), dim=dim,
                                                model_id=OTHER_MODEL)) as store:
            store.upsert(items)
        yield {}
        return
    pytest.importorskip("pymilvus")
    from ..index.test_milvus import _milvus_server

    port = free_port()
    milvus = _milvus_server(tmp_path / "milvus", port)
    try:
        uri = f"http://127.0.0.1:{port}"
        store = index.MilvusStore.open(index.MilvusConfig(uri, gallery="old", dim=dim, model_id=OTHER_MODEL))
        store.upsert(items)
        store.close()
        yield {"SIMSEARCH_MILVUS_URI": uri}
    finally:
        os.killpg(milvus.pid, signal.SIGKILL)
        milvus.wait()


@pytest.mark.parametrize("where", ["folder", "milvus"])
def test_a_gallery_of_another_models_vectors_answers_409_naming_both_and_can_be_deleted(hybrid1_artifact, tmp_path,
                                                                                        where):
    data = tmp_path / "data"
    dim = model.load_artifact(hybrid1_artifact).meta.embed_dim
    with _old_gallery(where, dim, tmp_path) as milvus_env:
        _ask_and_delete(hybrid1_artifact, tmp_path, milvus_env)
    if where == "folder":
        assert not index.gallery_path(data, "old").exists()


def _ask_and_delete(hybrid1_artifact, tmp_path, milvus_env: dict) -> None:
    env = {"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", **milvus_env}
    server = start_server(env, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            mine = c.get("/readyz").json()["model"]
            assert "old" in [g["name"] for g in c.get("/galleries").json()["galleries"]]
            for r in (c.get("/index", params={"gallery": "old"}),
                      c.post("/search", params={"gallery": "old"}, files=[upload(png(1))]),
                      c.post("/index", params={"gallery": "old"}, files=[upload(png(2))])):
                assert r.status_code == 409, r.text
                assert "retry-after" not in r.headers
                err = r.json()["error"]
                assert err["code"] == "model_mismatch", err
                assert OTHER_MODEL in err["message"] and mine in err["message"], err
                assert "simsearch index reembed" in err["message"] and "DELETE /galleries/old" in err["message"]

            gone = c.delete("/galleries/old")
            assert gone.status_code == 200, gone.text
            assert gone.json() == {"name": "old", "deleted": 3}
            assert "old" not in [g["name"] for g in c.get("/galleries").json()["galleries"]]
            assert c.get("/index", params={"gallery": "old"}).status_code == 404
    finally:
        stop_server(server)
    assert "Traceback" not in server.log_tail(20_000)
