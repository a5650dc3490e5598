"""A mark on a store folder that the command filling it (`index copy`, `index reembed`) has not finished: made
before its first write, removed after its last. A run cut off (killed, a full disk) leaves a store that opens
and serves a part of its source as if it were all of it; the mark lets `index stats`, `index check` and the
service say so. Running the same command again finishes the copy and removes the mark."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

INCOMPLETE_NAME = "incomplete.json"


def mark_incomplete(path: Path, command: str, source: str, said: str | None = None) -> None:
    """Mark the store folder `path` as being filled by `command` (e.g. "index copy") from `source`. `said`: what
    the mark says of the store instead (a sentence), where `command` finished and its source was a part already
    (a backup of a gallery marked incomplete), so that running it again finishes nothing."""
    path.mkdir(parents=True, exist_ok=True)
    part = path / (INCOMPLETE_NAME + ".part")
    mark = {"command": command, "source": source, "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if said is not None:
        mark["said"] = said
    part.write_text(json.dumps(mark) + "\n")
    part.replace(path / INCOMPLETE_NAME)


def clear_incomplete(path: Path) -> None:
    """The command filling `path` finished: remove its mark (none: nothing to do)."""
    (path / INCOMPLETE_NAME).unlink(missing_ok=True)


def incomplete(path: Path) -> str | None:
    """What the mark on the store folder `path` says, as a sentence (None: no mark, the store is whole)."""
    try:
        mark = json.loads((path / INCOMPLETE_NAME).read_text())
        command, source, started = mark["command"], mark["source"], mark["started"]
        said = mark.get("said")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return (f"the store at {path} is marked incomplete ({INCOMPLETE_NAME} is there but unreadable): a copy "
                "into it did not finish")
    if isinstance(said, str) and said:
        return f"the store at {path} is marked incomplete: {said}"
    return (f"`simsearch {command}` from {source} into {path}, started {started}, did not finish: the store "
            f"holds a part of its source. Run the same command again to finish it")
