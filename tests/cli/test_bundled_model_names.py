"""A bundled model artifact given by its name wherever the command line takes an artifact (serve --model,
index build --model, model-info, model-export), not only by its path inside the installed package; a file of
that name wins; a name that is neither lists the bundled names nearest first; `simsearch models` lists them."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.app.conftest import start_server, stop_server

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m cli ARGS` in `cwd` (not the checkout: no file there is named like a bundled model)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_model_info_takes_a_bundled_model_by_name(tmp_path):
    out = _run("model-info", "hybrid1-fashion-mnist", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["name"] == "hybrid1-fashion-mnist" and meta["in_chans"] == 1


def test_a_misspelt_model_name_is_one_line_listing_the_bundled_names_nearest_first(tmp_path):
    out = _run("model-info", "hybrid1-fashon-mnist", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "hybrid1-fashon-mnist: no such model artifact" in out.stderr, out.stderr
    assert "nearest first: hybrid1-fashion-mnist, " in out.stderr, out.stderr
    assert "hybrid1-cifar10" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_file_that_exists_wins_over_the_bundled_model_of_that_name(hybrid1_artifact, tmp_path):
    shutil.copy(hybrid1_artifact, tmp_path / "hybrid1-mnist")
    out = _run("model-info", "hybrid1-mnist", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "hybrid1-test"   # the file here, not the bundled hybrid1-mnist


def test_models_lists_the_bundled_artifacts_after_the_zoo(tmp_path):
    out = _run("models", "--in-chans", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    zoo, _, bundled = out.stdout.partition("\nbundled artifacts")
    assert any(line.startswith("hybrid1 ") for line in zoo.splitlines())
    lines = {line.split()[0]: line for line in bundled.splitlines()[1:] if line.strip()}
    assert set(lines) == {p.stem for p in (REPO / "model" / "weights").glob("*.safetensors")}, bundled
    fashion = lines["hybrid1-fashion-mnist"]
    assert "trained on fashion-mnist" in fashion and "precision@1 0.8800" in fashion and " KB" in fashion, fashion


def test_model_export_takes_a_bundled_name_and_writes_here_not_into_the_package(tmp_path):
    out = _run("model-export", "hybrid1-mnist", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hybrid1-mnist.onnx").is_file() and "model hybrid1-mnist@" in out.stdout, out.stdout
    assert not (REPO / "model" / "weights" / "hybrid1-mnist.onnx").exists()


def test_index_build_takes_a_bundled_model_by_name(cat_and_ship_photos, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = _run("index", "build", str(cat_and_ship_photos), "--data", str(tmp_path / "data"), "--model",
               "hybrid1-mnist", "--no-thumbnails", cwd=work)
    assert out.returncode == 0, out.stderr
    stats = _run("index", "stats", "--data", str(tmp_path / "data"), cwd=work)
    assert stats.returncode == 0 and "hybrid1-mnist@" in stats.stdout, stats.stdout + stats.stderr
    wrong = _run("index", "build", str(cat_and_ship_photos), "--data", str(tmp_path / "other"), "--model",
                 "hybrid1-mnst", cwd=work)
    assert wrong.returncode == 2 and "--model hybrid1-mnst: no such model artifact" in wrong.stderr, wrong.stderr
    assert "nearest first: hybrid1-mnist, " in wrong.stderr and not (tmp_path / "other" / "index").exists()


def test_serve_takes_a_bundled_model_by_name_and_becomes_ready_with_it(tmp_path):
    live = start_server({"SIMSEARCH_DATA_DIR": str(tmp_path / "data")}, tmp_path, args=["--model", "hybrid1-mnist"])
    try:
        ready = httpx.get(live.url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["model"].startswith("hybrid1-mnist@"), ready.text
    finally:
        stop_server(live)


def test_serve_with_a_misspelt_model_name_stops_at_start_listing_the_bundled_names(tmp_path):
    out = _run("serve", "--model", "hybrid1-mnst", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "SIMSEARCH_MODEL_PATH (--model) 'hybrid1-mnst': no such file, nor the name of a bundled model" \
        in out.stderr, out.stderr
    assert "nearest first: hybrid1-mnist, " in out.stderr, out.stderr
