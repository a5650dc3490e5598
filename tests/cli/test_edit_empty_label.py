"""`simsearch index edit --label ''` is refused alike in DATA and through a service (it selected the items labelled ""
in DATA and was a 422 over --url, where an empty label parameter is no label), saying how to select the unlabelled
items; the filter it names does select them, in both."""
from __future__ import annotations

import httpx
import numpy as np

from cli import main
from index import Item, Store, StoreConfig
from tests.app.conftest import start_server, stop_server

MODEL = "test-model@000000000000"
DIM = 8
KEY = "edit-empty-label-key"
UNLABELLED = '{"$label": {"$exists": false}}'


def _items(labels, dim: int = DIM) -> list[Item]:
    vecs = np.random.default_rng(5).standard_normal((len(labels), dim)).astype(np.float32)
    return [Item(f"i{k}", vecs[k], label, {}) for k, label in enumerate(labels)]


def _refused_saying_how_to_select_the_unlabelled(run, capsys) -> None:
    assert run(["--label", "", "--set", '{"x": 1}']) == 2
    err = capsys.readouterr().err
    assert "--label ''" in err and f"--where '{UNLABELLED}'" in err and len(err.strip().splitlines()) == 1, err


def test_an_empty_label_is_refused_in_data_and_the_filter_it_names_selects_the_unlabelled_items(tmp_path, capsys):
    data = tmp_path / "data"
    with Store.open(StoreConfig(data / "index", dim=DIM, model_id=MODEL)) as store:
        store.upsert(_items(["cat", None, ""]))   # the empty label: the Python API can store one

    def state() -> dict:
        with Store.open(StoreConfig(data / "index", read_only=True)) as store:
            return {it.id: (it.label, it.metadata) for it in store.list()}

    run = lambda args: main(["index", "edit", *args, "--data", str(data)])   # noqa: E731
    before = state()
    _refused_saying_how_to_select_the_unlabelled(run, capsys)
    assert state() == before
    assert run(["--where", UNLABELLED, "--set", '{"x": 1}']) == 0 and "updated 1 item\n" in capsys.readouterr().out
    assert run(["--where", '{"$label": ""}', "--set", '{"y": 2}']) == 0
    assert "updated 1 item\n" in capsys.readouterr().out
    assert state() == {"i0": ("cat", {}), "i1": (None, {"x": 1}), "i2": ("", {"y": 2})}


def test_an_empty_label_is_refused_through_a_service_as_in_data(hybrid1_artifact, tmp_path, capsys):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)
    try:
        listing = httpx.get(server.url + "/index").json()
        items = [{"id": it.id, "vector": it.vector.tolist(), "label": it.label, "metadata": {}}
                 for it in _items(["cat", None], listing["dimension"])]
        assert httpx.post(server.url + "/index", headers={"X-API-Key": KEY},
                          json={"model": listing["model"], "items": items}).status_code == 201

        def state() -> dict:
            return {it["id"]: (it["label"], it["metadata"]) for it in httpx.get(server.url + "/index").json()["items"]}

        run = lambda args: main(["index", "edit", *args, "--url", server.url, "--api-key", KEY])   # noqa: E731
        _refused_saying_how_to_select_the_unlabelled(run, capsys)
        assert state() == {"i0": ("cat", {}), "i1": (None, {})}
        assert run(["--where", UNLABELLED, "--set", '{"x": 1}']) == 0
        assert "updated 1 item\n" in capsys.readouterr().out
        assert state() == {"i0": ("cat", {}), "i1": (None, {"x": 1})}
    finally:
        stop_server(server)
