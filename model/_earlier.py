"""The bundled model files this repository shipped and has since replaced (model/weights/earlier.json, written
by scripts/earlier_models.py), so that a gallery made with one of them can be told where its model is."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

_EARLIER = Path(__file__).parent / "weights" / "earlier.json"


class EarlierModel(NamedTuple):
    """A bundled model file since replaced: the commit that shipped it, when, and its path in the repository."""
    commit: str
    date: str
    path: str

    @property
    def recover_command(self) -> str:
        """The shell command that, in a clone of simsearch, writes the file back (into the current folder)."""
        return f"git show {self.commit}:{self.path} > {Path(self.path).stem}-{self.commit}.safetensors"

    def describe(self) -> str:
        """One clause for an error message: what the file was and how to get it back."""
        return (f"the bundled {Path(self.path).stem} shipped in commit {self.commit} ({self.date}) and replaced "
                f"since; in a clone of simsearch, `{self.recover_command}` writes it back")


@lru_cache(maxsize=1)
def _shipped() -> dict[str, dict]:
    try:
        return json.loads(_EARLIER.read_text())
    except (OSError, ValueError):   # an install without the list: nothing to tell
        return {}


def earlier_bundled(model_id: str) -> EarlierModel | None:
    """The bundled file since replaced whose model id (name@sha12) is `model_id`, or None for any other id."""
    found = _shipped().get(model_id)
    return EarlierModel(found["commit"], found["date"], found["path"]) if found else None
