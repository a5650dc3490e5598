"""HEAD /galleries is answered as its GET for a key limited to some galleries: the headers, Content-Length
included, are those of the filtered list the GET gives that key, never of the whole list (whose length says how
much the other galleries' names take). Over a real `simsearch serve`."""
from __future__ import annotations

import httpx
import pytest

from .conftest import start_server, stop_server

FULL, GALA, READ_GALA = "head-full-k1", "head-gala-k2", "head-read-gala-k3"


@pytest.fixture(scope="module")
def client(hybrid1_artifact, tmp_path_factory):
    """Keys from a file: a full key and two limited to gala (one read-only); galleries gala and a long-named
    other one made."""
    work = tmp_path_factory.mktemp("head-scoped")
    (work / "keys").write_text(f"{FULL}\n{GALA} galleries=gala\n{READ_GALA} read galleries=gala\n")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work, ["--api-key-file", str(work / "keys")])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            for name in ("gala", "another-customers-gallery"):
                assert c.put(f"/galleries/{name}", headers={"X-API-Key": FULL}).status_code == 201
            yield c
    finally:
        stop_server(live)


@pytest.mark.parametrize("key", [GALA, READ_GALA, FULL, None])
def test_head_of_the_galleries_gives_the_headers_of_the_get_the_same_key_gets(client, key):
    headers = {"X-API-Key": key} if key else {}
    got, head = client.get("/galleries", headers=headers), client.head("/galleries", headers=headers)
    assert got.status_code == head.status_code == 200, head.text
    shown = [g["name"] for g in got.json()["galleries"]]
    if key in (GALA, READ_GALA):
        assert shown == ["gala"], shown
    else:
        assert {"gala", "another-customers-gallery"} <= set(shown), shown
    assert head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert head.headers["content-type"] == got.headers["content-type"]

