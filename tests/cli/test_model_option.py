"""--model on the index and search commands: a damaged artifact is refused in one line naming the file once."""
from cli import main


def test_a_damaged_model_artifact_is_one_line_naming_the_file_once(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"x")
    query = tmp_path / "q.jpg"
    query.write_bytes(b"not read")
    assert main(["search", str(query), "--data", str(tmp_path / "data"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--model {bad}: too short to be a safetensors file"), err
    assert err.count(str(bad)) == 1 and len(err.splitlines()) == 1
