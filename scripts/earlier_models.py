"""Write model/weights/earlier.json: every bundled model file this repository ever shipped and has since
replaced, by model id (name@sha12), with the commit that shipped it and its path, so that the service and the
CLI can tell an operator whose gallery was made with one of them where to get that file back
(`git show COMMIT:PATH`). Run from the repository root after replacing a bundled model:

    .venv/bin/python scripts/earlier_models.py
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model  # noqa: E402

OUT = ROOT / "model" / "weights" / "earlier.json"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout


def main() -> int:
    current = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "model" / "weights").glob("*.safetensors")}
    shipped: dict[str, dict] = {}
    log = _git("log", "--reverse", "--format=%h %ad", "--date=short", "--diff-filter=AM", "--",
               "model/weights/*.safetensors").decode().split("\n")
    for line in filter(None, log):
        commit, date = line.split()
        changed = _git("diff-tree", "--no-commit-id", "--name-only", "-r", "--diff-filter=AM", commit, "--",
                       "model/weights").decode().split()
        for path in (p for p in changed if p.endswith(".safetensors")):
            data = _git("show", f"{commit}:{path}")
            sha = hashlib.sha256(data).hexdigest()
            if current.get(Path(path).name) == sha:
                continue   # still bundled: bundled_artifact finds it
            with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
                f.write(data)
                f.flush()
                try:
                    name = model.read_meta(f.name).name
                except Exception as exc:  # noqa: BLE001  (a file this version cannot read: said, left out)
                    print(f"left out {commit}:{path}: {exc}", file=sys.stderr)
                    continue
            shipped.setdefault(f"{name}@{sha[:12]}", {"commit": commit, "date": date, "path": path})
    OUT.write_text(json.dumps(dict(sorted(shipped.items())), indent=1) + "\n")
    print(f"{len(shipped)} earlier bundled model files written to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
