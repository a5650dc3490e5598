"""`simsearch models` and `simsearch model-info` through the installed console script."""
import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120)


def test_models_lists_the_zoo_with_paper_counts():
    out = _run("models", "--in-chans", "1")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("hybrid1 "))
    assert "116,344" in line


def test_model_info_prints_the_artifact_metadata(hybrid1_artifact):
    out = _run("model-info", str(hybrid1_artifact))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["arch"] == "hybrid1"


def test_model_info_on_a_missing_file_is_one_clear_line(tmp_path):
    out = _run("model-info", str(tmp_path / "missing.safetensors"))
    assert out.returncode == 2
    assert "no such model artifact" in out.stderr and "Traceback" not in out.stderr
