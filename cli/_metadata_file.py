"""`--metadata FILE` of `index build` and `index upload`: each image's metadata from a file beside the images,
as a vector database imports payloads. JSON Lines (`.jsonl`, `.ndjson`), one object a line with the image's
`id` (its path relative to SOURCE, as the ids are made) and its other keys, typed as JSON; or CSV (`.csv`),
a header with an `id` column, each other column a key whose cells are strings (an empty cell: no key)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ._errors import CliError


def read_metadata_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """id -> metadata object, from a .jsonl/.ndjson or .csv file; CliError naming the file, the line and what is
    wrong (not JSON, not an object, NaN or Infinity, no id, an id given twice)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise CliError(f"--metadata {path}: give a .jsonl (JSON Lines: one object a line with an \"id\") or a "
                       ".csv (a header with an \"id\" column) file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(_csv_rows(f, path) if suffix == ".csv" else _json_rows(f, path))
    except OSError as exc:
        raise CliError(f"--metadata {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"--metadata {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out: dict[str, dict[str, Any]] = {}
    for line, row in rows:
        id_ = row.pop("id", None)
        if not isinstance(id_, str) or not id_:
            raise CliError(f"--metadata {path}, line {line}: no \"id\" (a string: the image's path relative to the "
                           f"source folder, e.g. \"cat/001.jpg\"), got {id_!r:.60}")
        if id_ in out:
            raise CliError(f"--metadata {path}, line {line}: the id {id_!r} is given a second time")
        out[id_] = row
    return out


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _json_rows(f, path: Path):
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise CliError(f"--metadata {path}, line {line}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise CliError(f"--metadata {path}, line {line}: a JSON object is needed, got {type(row).__name__}")
        yield line, row


def _csv_rows(f, path: Path):
    reader = csv.DictReader(f)
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise CliError(f"--metadata {path}: the first line must name the columns, one of them \"id\"; got "
                       f"{reader.fieldnames}")
    for row in reader:
        if None in row:   # more cells than the header has columns
            raise CliError(f"--metadata {path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} "
                           f"cells for {len(reader.fieldnames)} columns")
        yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None) or k == "id"}
