"""Every error code the service's code can answer with (a status and a `code` written together in app/) has its row
in docs/service.md's errors table, under that status: a client's error handling is built from that table, and in
the fifty-second session seven codes the service sent (invalid_position, position_ahead, gallery_exists,
not_a_store, not_supported, internal_error, client_disconnected) were missing from it."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a status and a code literal side by side, as ApiError(422, "invalid_parameter", ...) and send_error(...) take them
_RAISED = re.compile(r"\b([45]\d\d),\s*\"([a-z][a-z_]+)\"")
_ROW = re.compile(r"^\| ([45]\d\d) \| (.*?) \|")


def _raised_in_app() -> set[tuple[str, str]]:
    found = set()
    for path in sorted((REPO / "app").glob("*.py")):
        found.update(_RAISED.findall(path.read_text(encoding="utf-8")))
    return found


def _documented() -> set[tuple[str, str]]:
    rows = set()
    for line in (REPO / "docs" / "service.md").read_text(encoding="utf-8").splitlines():
        if m := _ROW.match(line):
            rows.update((m.group(1), code) for code in re.findall(r"`([a-z][a-z_]+)`", m.group(2)))
    return rows


def test_every_error_code_the_service_raises_has_a_row_in_the_errors_table():
    raised = _raised_in_app()
    assert len(raised) > 30   # the pattern still finds the codes (it would pass vacuously otherwise)
    missing = sorted(raised - _documented())
    assert not missing, f"error codes answered by app/ but not in docs/service.md's errors table: {missing}"
