"""`simsearch serve`'s own decisions (the service itself is tested over HTTP in tests/app/)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from cli._errors import CliError
from cli._serve import _metrics_folder
from tests.app.conftest import start_server, stop_server


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


def test_a_misspelt_setting_is_named_at_start_with_the_setting_it_meant_and_the_service_still_serves(
        hybrid1_artifact, tmp_path):
    # SIMSEARCH_DATA (for SIMSEARCH_DATA_DIR) was left unused without a word: the index went to ./data
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA": str(tmp_path / "meant"),
                         "SIMSEARCH_DATA_DIR": str(tmp_path / "data"), "SIMSEARCH_SERVICE_HOST": "10.0.0.7",
                         "SIMSEARCH_WORKERS": "1"}, tmp_path)
    try:
        assert httpx.get(live.url + "/readyz").status_code == 200
        log = live.log.read_text()
        assert "SIMSEARCH_DATA is not a setting and is ignored (did you mean SIMSEARCH_DATA_DIR?)" in log, log
        assert "SIMSEARCH_SERVICE_HOST is not a setting and is ignored\n" in log, log   # no guess for it
        assert "SIMSEARCH_DATA_DIR is not" not in log and "SIMSEARCH_WORKERS" not in log   # read by serve itself
    finally:
        stop_server(live)


def test_a_port_variable_that_is_not_a_number_is_one_clear_error_of_serve_alone(tmp_path):
    # Kubernetes sets SIMSEARCH_PORT=tcp://IP:PORT for a Service called simsearch; it broke every command
    env = {**os.environ, "SIMSEARCH_PORT": "tcp://10.0.0.7:8000"}
    exe = [sys.executable, "-m", "cli"]
    served = subprocess.run([*exe, "serve"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert served.returncode == 2 and "'tcp://10.0.0.7:8000' is not a port number" in served.stderr, served.stderr
    assert "Traceback" not in served.stderr and "enableServiceLinks" in served.stderr
    helped = subprocess.run([*exe, "index", "--help"], env=env, capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert helped.returncode == 0, helped.stderr


@pytest.mark.parametrize("variable, value, words", [
    ("SIMSEARCH_MODEL_PATH", "{tmp}/nonexistent.safetensors", "SIMSEARCH_MODEL_PATH (--model) '{tmp}/nonexistent"
                                                              ".safetensors': no such file"),
    ("SIMSEARCH_MODEL_PATH", "{tmp}", "is a folder, not a model artifact"),
    ("SIMSEARCH_DATA_DIR", "{tmp}/a-file/data", "SIMSEARCH_DATA_DIR (--data) '{tmp}/a-file/data': '{tmp}/a-file' is a "
                                                "file, not a folder"),
    ("SIMSEARCH_INDEX", "bogus", "SIMSEARCH_INDEX (--index): index 'bogus' is not a preset (flat, hnsw, ivf, ivfpq) "
                                 "nor a valid FAISS factory string for dimension 256: could not parse index string"),
    ("SIMSEARCH_DEVICE", "tpu", "SIMSEARCH_DEVICE (--device) 'tpu': give cpu, cuda"),
    ("SIMSEARCH_LOG_FORMAT", "JSON", "SIMSEARCH_LOG_FORMAT 'JSON': give text or json"),
    ("SIMSEARCH_HOST", "nosuchhost.invalid", "SIMSEARCH_HOST (--host) 'nosuchhost.invalid': not an address"),
])
def test_a_setting_that_would_keep_the_service_never_ready_is_one_line_at_start_naming_it(tmp_path, variable, value,
                                                                                        words):
    # each of these used to start a process that answered /healthz but stayed not ready, its reason in the log
    (tmp_path / "a-file").write_text("not a folder")
    env = {**os.environ, "SIMSEARCH_DATA_DIR": str(tmp_path / "data"), variable: value.format(tmp=tmp_path)}
    served = subprocess.run([sys.executable, "-m", "cli", "serve", "--port", "0"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert served.returncode == 2, served.stderr[-2000:]
    assert words.format(tmp=tmp_path) in served.stderr and "Traceback" not in served.stderr, served.stderr
    assert not (tmp_path / "data").exists()   # nothing was made


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs serve as another user: needs root and setpriv")
def test_a_data_folder_another_user_owns_is_one_line_at_start_naming_the_uid():
    # an operator's container check (session 53): a host folder owned by root mounted at /data started a service
    # that answered /healthz (the image's HEALTHCHECK: healthy) and stayed not ready for good, "Permission denied"
    # in its log; a data folder that could not be made was one line already, one that is there but not writable not
    data = Path(tempfile.mkdtemp(prefix="simsearch-not-yours-"))   # in /tmp: every user may reach it
    try:
        data.chmod(0o755)   # root's: another user reads it, cannot write it
        served = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                 sys.executable, "-m", "cli", "serve", "--port", "0", "--data", str(data)],
                                env={**os.environ, "HOME": str(data)}, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert served.returncode == 2, served.stderr[-2000:]
    assert (f"SIMSEARCH_DATA_DIR (--data) '{data}': not writable by this process (uid 65534); give the folder to "
            "that user") in served.stderr, served.stderr
    assert "Traceback" not in served.stderr, served.stderr


def test_a_port_in_use_is_one_line_before_anything_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "SIMSEARCH_DATA_DIR": str(tmp_path / "data")}
        served = subprocess.run([sys.executable, "-m", "cli", "serve", "--port", str(port)], env=env,
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert served.returncode == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in served.stderr, \
        served.stderr[-2000:]
    # it used to load the model, open (and lock) the index and say "ready in ..." after the bind failed
    assert "Started server process" not in served.stderr and not (tmp_path / "data").exists()


@pytest.mark.parametrize("given, words", [
    (["--root-path", "/simsearch/"], "SIMSEARCH_ROOT_PATH: Value error, not a path prefix: it must not end with / "
                                     "(give '/simsearch') (got '/simsearch/')"),
    (["--root-path", "simsearch"], "it must start with / (/simsearch, say) (got 'simsearch')"),
    (["--root-path", "/"], "/ is the root itself: leave it unset (empty) to serve at the root (got '/')"),
    (["--root-path", "/photos?x=1"], "it holds ? or # (a prefix has no query or fragment) (got '/photos?x=1')"),
    (["--root-path", "/two words"], "no spaces, % escapes or non-ASCII) (got '/two words')"),
    # the service serves paths with the prefix and without: /search/... could not be told from /search
    (["--root-path", "/search"], "/search is a path the service serves itself, so a request for it could not be "
                                 "told from one under the prefix: choose another prefix (/simsearch, say) (got "
                                 "'/search')"),
    (["--root-path", "/static/photos"], "/static is a path the service serves itself"),
])
def test_a_root_path_that_is_no_path_prefix_is_one_line_at_start_naming_it(tmp_path, given, words):
    env = {**os.environ, "SIMSEARCH_DATA_DIR": str(tmp_path / "data")}
    served = subprocess.run([sys.executable, "-m", "cli", "serve", "--port", "0", *given], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert served.returncode == 2 and words in served.stderr and "Traceback" not in served.stderr, served.stderr
    assert not (tmp_path / "data").exists()
