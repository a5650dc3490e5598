"""A JSON object the user gives with one key twice is refused by the command line, as the service refuses it
(422), in one line naming the key and the option, and nothing changes: JSON parsers keep the last value, so
`--where '{"n": {"$gte": 25}, "n": {"$lt": 5}}'` filtered on n < 5 alone and `index delete --yes` removed the
items it was written to keep. --where (index delete, facets, edit, search), `index edit --set`, and the lines of
a --metadata file (and a CSV header naming a column twice)."""
from __future__ import annotations

import numpy as np
import pytest

from cli import main
from index import Item, Store, StoreConfig

MODEL = "test-model@000000000000"
DIM = 8
TWICE = '{"n": {"$gte": 25}, "n": {"$lt": 5}}'


@pytest.fixture
def data(tmp_path):
    """A gallery of 30 items, n = 0..29, labelled cat."""
    data = tmp_path / "data"
    vecs = np.random.default_rng(7).standard_normal((30, DIM)).astype(np.float32)
    with Store.open(StoreConfig(data / "index", dim=DIM, model_id=MODEL)) as store:
        store.upsert([Item(f"i{n}", vecs[n], "cat", {"n": n}) for n in range(30)])
    return data


def _state(data) -> dict:
    with Store.open(StoreConfig(data / "index", read_only=True)) as store:
        return {it.id: (it.label, it.metadata) for it in store.list()}


def _refused(capsys, args: list[str], *words: str) -> str:
    assert main(args) == 2, args
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), (args, err)
    return err


@pytest.mark.parametrize("command", [["index", "delete", "--yes"], ["index", "facets", "label"],
                                     ["index", "edit", "--set", '{"x": 1}']], ids=["delete", "facets", "edit"])
def test_a_where_giving_a_key_twice_is_refused_naming_it_and_changes_nothing(data, capsys, command):
    before = _state(data)
    err = _refused(capsys, [*command, "--where", TWICE, "--data", str(data)], "--where", "'n'", "twice", "$and")
    assert "Traceback" not in err
    assert _state(data) == before
    assert main(["index", "delete", "--where", '{"n": {"$gte": 25, "$lt": 5}}', "--yes", "--data", str(data)]) == 0
    assert "deleted 0 items" in capsys.readouterr().out   # the same conditions in one object: none matches


def test_a_search_where_giving_a_key_twice_is_refused_before_anything_is_read(data, capsys):
    _refused(capsys, ["search", "--where", TWICE, "--data", str(data), "no-such-image.jpg"], "--where", "'n'")
    _refused(capsys, ["search", "--where", TWICE, "--url", "http://127.0.0.1:9", "no-such-image.jpg"],
             "--where", "'n'")


def test_a_set_patch_giving_a_key_twice_is_refused_naming_it(data, capsys):
    before = _state(data)
    _refused(capsys, ["index", "edit", "--label", "cat", "--set", '{"a": 1, "a": null}', "--data", str(data)],
             "--set", "'a'", "twice")
    _refused(capsys, ["index", "edit", "--label", "cat", "--set", '{"a": {"b": 1, "b": 2}}', "--data", str(data)],
             "--set", "'b'")   # at any depth
    assert _state(data) == before


def test_a_metadata_file_line_giving_a_key_twice_is_refused_naming_the_file_the_line_and_the_key(data, tmp_path,
                                                                                             capsys):
    before = _state(data)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "i1", "x": 1}\n{"id": "i2", "x": 1, "x": null}\n')
    _refused(capsys, ["index", "edit", "--metadata", str(rows), "--data", str(data)],
             f"--metadata {rows}, line 2", "'x'", "twice")
    rows.write_text('{"id": "i1", "id": "i2", "x": 1}\n')
    _refused(capsys, ["index", "edit", "--metadata", str(rows), "--data", str(data)], "line 1", "'id'")
    table = tmp_path / "rows.csv"
    table.write_text("id,x,x\ni1,a,b\n")
    _refused(capsys, ["index", "edit", "--metadata", str(table), "--data", str(data)],
             f"--metadata {table}", "column 'x' twice")
    assert _state(data) == before
