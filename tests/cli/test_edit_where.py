"""`simsearch index edit --label/--where ... --set JSON / --set-label LABEL`: one merge patch and/or label onto
every item the filter selects, in DATA, in Milvus (Lite) and through a running service (PATCH /index); it says
how many items changed, and refuses a call without a selection, without a change, mixed with --metadata, or one
whose patch an item would refuse (changing nothing)."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from cli import main
from index import Item, Store, StoreConfig
from tests.app.conftest import start_server, stop_server

MODEL = "test-model@000000000000"
DIM = 8
KEY = "edit-where-key"
# (label, metadata) of each item
_ITEMS = [("cat", {"year": 2023, "tags": ["pet", "indoor"]}), ("dog", {"year": 2024, "tags": ["pet"]}),
          ("cat", {"year": 2025, "tags": ["wild"]}), (None, {"year": 2023, "notes": "x" * 60_000})]


def _items(dim: int = DIM) -> list[Item]:
    vecs = np.random.default_rng(3).standard_normal((len(_ITEMS), dim)).astype(np.float32)
    return [Item(f"i{k}", vecs[k], label, meta) for k, (label, meta) in enumerate(_ITEMS)]


def _state(store) -> dict[str, tuple]:
    return {it.id: (it.label, {k: v for k, v in it.metadata.items() if k != "notes"}) for it in store.list()}


def _edits_and_refusals(run, read, capsys) -> None:
    """The same edits and refusals, whichever gallery `run(args) -> exit status` edits; `read()` -> _state."""
    assert run(["--where", '{"tags": "pet"}', "--set", '{"album": "pets", "year": null}']) == 0
    assert "updated 2 items" in capsys.readouterr().out
    after = read()
    assert after["i0"] == ("cat", {"tags": ["pet", "indoor"], "album": "pets"})
    assert after["i1"] == ("dog", {"tags": ["pet"], "album": "pets"})
    assert after["i2"] == ("cat", {"year": 2025, "tags": ["wild"]}) and after["i3"] == (None, {"year": 2023})
    assert run(["--label", "cat", "--where", '{"$label": "cat", "album": "pets"}', "--set-label", "kitten",
                "--set", '{"seen": true}']) == 0
    assert "updated 1 item\n" in capsys.readouterr().out
    assert read()["i0"] == ("kitten", {"tags": ["pet", "indoor"], "album": "pets", "seen": True})
    assert run(["--label", "kitten", "--set-label", ""]) == 0   # '' removes the label
    assert read()["i0"][0] is None
    assert run(["--where", '{"year": 1999}', "--set", '{"x": 1}']) == 0
    assert "updated 0 items (none matches --label/--where)" in capsys.readouterr().out
    before = read()
    for args, words in ([["--set", '{"x": 1}'], "--label and/or --where"],
                        [["--label", "cat"], "nothing to change"],
                        [["--label", "cat", "--set", "{nope"], "--set '{nope' is not valid JSON"],
                        [["--label", "cat", "--set", "[1]"], "--set must be a JSON object"],
                        [["--where", '{"year": {"$bad": 1}}', "--set", '{"x": 1}'], "$bad"],
                        [["--label", "cat", "--set", '{"$x": 1}'], "'$x'"],
                        [["--where", '{"year": 2023}', "--set", '{"more": "' + "y" * 6000 + '"}'], "item 'i3'"],
                        [["--metadata", "rows.jsonl", "--label", "cat", "--set", '{"x": 1}'], "not both"]):
        assert run(args) == 2, args
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert read() == before


def test_edit_by_filter_changes_the_matching_items_in_data(tmp_path, capsys):
    data = tmp_path / "data"
    with Store.open(StoreConfig(data / "index", dim=DIM, model_id=MODEL)) as store:
        store.upsert(_items())

    def read():
        with Store.open(StoreConfig(data / "index", read_only=True)) as store:
            return _state(store)

    _edits_and_refusals(lambda args: main(["index", "edit", *args, "--data", str(data)]), read, capsys)
    # a filter on the new values finds them at once, in a search
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        assert [h.id for h in store.search(_items()[1].vector, k=5, where={"album": "pets"})[0]] == ["i1", "i0"]


def test_edit_by_filter_changes_the_matching_items_in_milvus(tmp_path, capsys):
    pytest.importorskip("pymilvus")
    from index import MilvusConfig, MilvusStore

    uri = str(tmp_path / "milvus.db")
    store = MilvusStore.open(MilvusConfig(uri=uri, dim=DIM, model_id=MODEL))
    store.upsert(_items())
    store.close()

    def read():
        opened = MilvusStore.open(MilvusConfig(uri=uri, read_only=True))
        try:
            return _state(opened)
        finally:
            opened.close()

    _edits_and_refusals(lambda args: main(["index", "edit", *args, "--milvus-uri", uri]), read, capsys)


def test_edit_by_filter_changes_the_matching_items_through_a_service(hybrid1_artifact, tmp_path, capsys):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        listing = httpx.get(server.url + "/index").json()
        items = [{"id": it.id, "vector": it.vector.tolist(), "label": it.label, "metadata": it.metadata}
                 for it in _items(listing["dimension"])]
        r = httpx.post(server.url + "/index", headers={"X-API-Key": KEY},
                       json={"model": listing["model"], "items": items})
        assert r.status_code == 201, r.text

        def read():
            return {it["id"]: (it["label"], {k: v for k, v in it["metadata"].items() if k != "notes"})
                    for it in httpx.get(server.url + "/index").json()["items"]}

        url = ["--url", server.url]
        _edits_and_refusals(lambda args: main(["index", "edit", *args, *url, "--api-key", KEY]), read, capsys)
        assert main(["index", "edit", "--label", "cat", "--set", '{"x": 1}', *url, "--api-key", ""]) == 2
        assert "needs an API key for writes" in capsys.readouterr().err
        assert main(["index", "edit", "--label", "cat", "--set", '{"x": 1}', *url, "--api-key", KEY,
                     "--gallery", "nope"]) == 2
        assert "'nope'" in capsys.readouterr().err
        assert "nope" not in json.dumps(httpx.get(server.url + "/galleries").json())
    finally:
        stop_server(server)
