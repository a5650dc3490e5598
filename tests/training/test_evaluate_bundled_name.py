"""`simsearch evaluate NAME DATA`: a bundled artifact given by its name, as serve --model and model-info take it."""
from pathlib import Path

from tests.training.conftest import run_cli


def test_evaluate_takes_a_bundled_model_by_name(shared_data, tmp_path):
    r = run_cli("evaluate", "hybrid1-mnist", str(shared_data / "mnist"), "--max-test", "200", "--quiet",
                "--json", str(tmp_path / "m.json"), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(tmp_path / "m.json").is_file()
    wrong = run_cli("evaluate", "hybrid1-mnst", str(shared_data / "mnist"), cache=tmp_path)
    assert wrong.returncode == 2 and "hybrid1-mnst: no such model artifact" in wrong.stderr, wrong.stderr
    assert "nearest first: hybrid1-mnist, " in wrong.stderr and "Traceback" not in wrong.stderr
