"""`simsearch serve`'s own decisions (the service itself is tested over HTTP in tests/app/)."""
from __future__ import annotations

import os

import pytest

from cli._errors import CliError
from cli._serve import _metrics_folder


def test_the_workers_metrics_folder_given_by_the_operator_is_emptied_of_the_last_runs_counts(tmp_path, monkeypatch):
    folder = tmp_path / "prom"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old counts")
    (folder / "gauge_livesum_123.db").write_bytes(b"old gauge")
    (folder / "README").write_text("the operator's own file")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    assert _metrics_folder() is None   # the operator's folder: not removed at exit
    assert sorted(p.name for p in folder.iterdir()) == ["README"]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "new" / "prom"))
    assert _metrics_folder() is None and (tmp_path / "new" / "prom").is_dir()


def test_without_a_metrics_folder_the_workers_get_a_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")   # so that the value _metrics_folder sets is undone
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)   # re-read TMPDIR
    made = _metrics_folder()
    assert made is not None and made.parent == tmp_path and made.is_dir() and not any(made.iterdir())
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)


def test_a_metrics_folder_that_cannot_be_used_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "file"))
    with pytest.raises(CliError, match=r"PROMETHEUS_MULTIPROC_DIR=.*file: cannot use it"):
        _metrics_folder()
