"""`simsearch train --out` and `simsearch evaluate --json/--out/--mistakes-sheet` where the file cannot be written
(under a file, in a folder that cannot be written): one line naming the option and the path, before any work; a
missing folder is made, as it was."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "cache"))


def _one_line_refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_train_out_under_a_file_is_refused_before_the_data_is_read(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a folder")
    out = tmp_path / "notes.txt" / "x.safetensors"
    # the data does not exist: refused for --out first, so before the data is read
    said = _one_line_refusal(capsys, ["train", str(tmp_path / "no-such-data"), "--out", str(out), "--quiet"])
    assert said == (f"simsearch train: error: --out {out}: cannot write there ({tmp_path / 'notes.txt'} is a file, "
                    "not a folder)")


@pytest.mark.skipif(not Path("/proc").is_dir() or Path("/proc/no").exists(), reason="needs a /proc, without no/")
def test_train_out_in_a_folder_that_cannot_be_made_is_refused_naming_it(tmp_path, capsys):
    said = _one_line_refusal(capsys, ["train", str(tmp_path / "no-such-data"), "--out", "/proc/no/x.safetensors",
                                      "--quiet"])
    assert said.startswith("simsearch train: error: --out /proc/no/x.safetensors: cannot write there (")


def test_train_out_in_a_missing_folder_still_makes_the_folder(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "x.safetensors"
    said = _one_line_refusal(capsys, ["train", str(tmp_path / "no-such-data"), "--out", str(out), "--quiet"])
    assert "no-such-data" in said and "--out" not in said   # refused for the data, not for --out
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []   # nothing left behind by the check


@pytest.mark.parametrize("option,name", [("--json", "m.json"), ("--out", "copy.safetensors"),
                                         ("--mistakes-sheet", "m.png"), ("--map", "map.png")])
def test_evaluate_outputs_under_a_file_are_refused_before_evaluating(tmp_path, capsys, option, name):
    (tmp_path / "notes.txt").write_text("not a folder")
    path = tmp_path / "notes.txt" / name
    said = _one_line_refusal(capsys, ["evaluate", str(BUNDLED), str(tmp_path / "no-such-data"), option, str(path)])
    assert said == (f"simsearch evaluate: error: {option} {path}: cannot write there ({tmp_path / 'notes.txt'} is "
                    "a file, not a folder)")


def test_evaluate_json_is_refused_when_it_names_a_folder(tmp_path, capsys):
    said = _one_line_refusal(capsys, ["evaluate", str(BUNDLED), str(tmp_path / "no-such-data"), "--json",
                                      str(tmp_path)])
    assert said == f"simsearch evaluate: error: --json {tmp_path}: is a folder; give a file name"


def test_evaluate_json_into_a_missing_folder_makes_it_and_writes_the_metrics(cat_and_ship_photos, tmp_path, capsys):
    out = tmp_path / "reports" / "today" / "metrics.json"
    assert main(["evaluate", str(BUNDLED), str(cat_and_ship_photos), "--json", str(out), "--threads", "1",
                 "--quiet"]) == 0
    written = json.loads(out.read_text())
    assert written["dataset"]["name"] == "photos" and 0 <= written["precision_at_1"] <= 1
