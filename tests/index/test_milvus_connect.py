"""The first connection to a gallery in Milvus: a Milvus Lite file's (a server in this process, which on a loaded
machine sometimes answers no connection in time) is tried again a few times, each retry logged, before the store
gives up; a Milvus server's refusal fails at once, with the message it always had."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")

import index  # noqa: E402
from index import Item, MilvusConfig, MilvusStore  # noqa: E402
from index import _milvus  # noqa: E402

from ..app.conftest import free_port  # noqa: E402
from .conftest import DIM, unit  # noqa: E402

MODEL = "test-model@000000000000"


def _answering_nothing(path: Path) -> None:
    """Make the Milvus Lite server that pymilvus finds for the file `path` one that answers no connection: a real
    Lite server, started for another file and stopped, its port refusing (to a client, a server not up in time).
    Milvus Lite keeps one server a file in this registry (milvus_lite.server_manager); release_server(path)
    forgets it, and the next connection starts a real one."""
    from milvus_lite.server_manager import server_manager_instance as servers

    other = os.path.abspath(path.parent / "stopped.db")
    servers.start_and_get_uri(other)
    with servers._lock:
        entry = servers._servers.pop(other)
        entry[0].stop(grace=0).wait()
        servers._servers[os.path.abspath(path)] = entry


def _release(path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance as servers

    servers.release_server(str(path))


class _OnRetry(logging.Handler):
    """Each retry the store logs, kept; `then` called at the first."""

    def __init__(self, then=None):
        super().__init__(logging.WARNING)
        self.retries: list[str] = []
        self.then = then

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "trying again" in message:
            self.retries.append(message)
            if self.then is not None and len(self.retries) == 1:
                self.then()


@pytest.fixture
def retries():
    """retries(then=None) -> the handler that keeps the store's retries (on the "index" logger while the test runs)."""
    handlers: list[_OnRetry] = []

    def _make(then=None) -> _OnRetry:
        handler = _OnRetry(then)
        logging.getLogger("index").addHandler(handler)
        handlers.append(handler)
        return handler

    yield _make
    for handler in handlers:
        logging.getLogger("index").removeHandler(handler)


def test_a_lite_file_whose_first_connection_fails_is_connected_on_a_retry(tmp_path, retries):
    path = tmp_path / "lite" / "galleries.db"
    path.parent.mkdir()
    _answering_nothing(path)
    seen = retries(then=lambda: _release(path))   # the server is up by the second try
    try:
        store = MilvusStore.open(MilvusConfig(str(path), gallery="g", dim=DIM, model_id=MODEL))
        try:
            vectors = unit(np.random.default_rng(0), 3)
            store.upsert([Item(f"i{i}", v) for i, v in enumerate(vectors)])
            assert store.search(vectors[1], k=1)[0][0].id == "i1"
        finally:
            store.close()
    finally:
        _release(path)
    assert len(seen.retries) == 1, seen.retries
    assert str(path) in seen.retries[0] and "Fail connecting to server" in seen.retries[0], seen.retries[0]
    assert f"try 2 of {_milvus._LITE_CONNECT_TRIES}" in seen.retries[0], seen.retries[0]


def test_a_lite_file_that_never_answers_is_given_up_after_its_tries(tmp_path, retries):
    path = tmp_path / "galleries.db"
    _answering_nothing(path)
    seen = retries()
    t = time.perf_counter()
    try:
        with pytest.raises(index.StoreUnavailableError,
                           match="cannot reach Milvus at .*galleries.db: .*Fail connecting"):
            MilvusStore.open(MilvusConfig(str(path), gallery="g", dim=DIM, model_id=MODEL))
    finally:
        _release(path)
    tries = _milvus._LITE_CONNECT_TRIES
    assert len(seen.retries) == tries - 1, seen.retries
    assert time.perf_counter() - t >= (tries - 1) * _milvus._LITE_CONNECT_WAIT


def test_a_servers_refusal_fails_at_once_with_its_message(retries):
    seen = retries()
    t = time.perf_counter()
    with pytest.raises(index.StoreUnavailableError, match=r"^cannot reach Milvus at http://\*\*\*@127.0.0.1:\d+: "
                                                          r".*Fail connecting") as err:
        MilvusStore.open(MilvusConfig(f"http://user:secret@127.0.0.1:{free_port()}", gallery="g", dim=DIM,
                                      model_id=MODEL))
    assert "secret" not in str(err.value)
    assert seen.retries == []
    assert time.perf_counter() - t < _milvus._LITE_CONNECT_WAIT
