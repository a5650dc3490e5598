"""Each image's metadata beyond {width, height}, for `index build` and `index upload` alike.

`--exif`: when the photo was taken and with what camera, from its EXIF (`exif_metadata`).

`--gps`: where it was taken, from its EXIF GPS (`gps_metadata`): off unless asked, as a location is personal.

`--metadata FILE`: each image's metadata from a file beside the images, as a vector database imports
payloads (`read_metadata_file`). JSON Lines (`.jsonl`, `.ndjson`), one object a line with the image's `id`
(its path relative to SOURCE, as the ids are made) and its other keys, typed as JSON; or CSV (`.csv`), a
header with an `id` column, each other column a key whose cells are strings (an empty cell: no key); a column
with dots in its name, `cam.make`, a key inside an object (`{"cam": {"make": ...}}`), as filters read it.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from ._errors import CliError
from ._galleries import user_json


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
            row = user_json(text, f"--metadata {path}, line {line},", parse_constant=_reject_constant)
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
    twice = next((name for i, name in enumerate(reader.fieldnames) if name in reader.fieldnames[:i]), None)
    if twice is not None:   # a row would keep the last such column's cell alone, silently
        raise CliError(f"--metadata {path}: the first line names the column {twice!r} twice; name each once")
    paths = _column_paths(reader.fieldnames, path)
    for row in reader:
        if None in row:   # more cells than the header has columns
            raise CliError(f"--metadata {path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} "
                           f"cells for {len(reader.fieldnames)} columns")
        out: dict[str, Any] = {}
        for column, value in row.items():
            if value not in ("", None) or column == "id":
                *outer, last = paths[column]
                inside = out
                for key in outer:
                    inside = inside.setdefault(key, {})
                inside[last] = value
        yield reader.line_num, out


def _column_paths(columns: list[str], path: Path) -> dict[str, list[str]]:
    """Each CSV column's place in an item's metadata: "album" a key, "cam.make" the key make of the object cam
    (a dotted path, as a where filter, a facet and group_by read it; the stores refuse a key holding a dot).
    CliError naming the column for an empty part ("cam.", "a..b") or a column that is both a value and an object
    ("cam" beside "cam.make")."""
    paths = {c: ([c] if c == "id" else c.split(".")) for c in columns}
    for column, parts in paths.items():
        if "" in parts:
            raise CliError(f"--metadata {path}: the column {column!r} has an empty part between its dots; a dotted "
                           "column names a key inside an object, cam.make the key make of cam")
    prefixes = {tuple(parts[:i]): column for column, parts in paths.items() for i in range(1, len(parts))}
    clash = next((c for c, parts in paths.items() if tuple(parts) in prefixes), None)
    if clash is not None:
        raise CliError(f"--metadata {path}: the column {clash!r} gives {clash!r} a value and the column "
                       f"{prefixes[tuple(paths[clash])]!r} puts a key inside it; an item's {clash!r} is one or the "
                       "other: rename one column")
    return paths


_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_LAT_REF, _LAT, _LON_REF, _LON, _ALT_REF, _ALT, _GPS_STATUS = 1, 2, 3, 4, 5, 6, 9
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
_EXIF_TIME = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"[+-]\d{2}:\d{2}")


def exif_metadata(image) -> dict[str, str]:
    """`taken` (ISO 8601, "2024-06-01T14:03:22", with the camera's "+02:00" when it recorded one: the
    original's time, else the file's) and `camera` ("Apple iPhone 13") from an opened image's EXIF, each
    only when it is there and well formed (a phone's photo has both; a screenshot or a scan may have none)."""
    out: dict[str, str] = {}
    try:
        exif = image.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001  (EXIF Pillow cannot read is as good as none)
        return out
    when = _text(sub.get(_DATETIME_ORIGINAL)) or _text(exif.get(_DATETIME))
    m = _EXIF_TIME.fullmatch(when or "")
    if m and "00" not in (m.group(2), m.group(3)):   # a camera with no clock set writes 0000:00:00 00:00:00
        offset = _text(sub.get(_OFFSET_TIME_ORIGINAL)) if sub.get(_DATETIME_ORIGINAL) else None
        y, mo, d, h, mi, sec = m.groups()
        out["taken"] = f"{y}-{mo}-{d}T{h}:{mi}:{sec}" + (offset if offset and _OFFSET.fullmatch(offset) else "")
    make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    if model and make and model.lower().startswith(make.lower()):   # "Canon" "Canon EOS R5": said once
        make = None
    camera = " ".join(filter(None, (make, model)))
    if camera:
        out["camera"] = camera
    return out


def gps_metadata(image) -> dict[str, float]:
    """`lat` and `lon` (decimal degrees, 6 places: south and west negative) and `altitude` (metres, below sea
    level negative, when recorded) from an opened image's EXIF GPS, only when it records a fix that is well
    formed: no fix ("V" status), a position at exactly 0, 0 (what some cameras write without one), or
    degrees, minutes or seconds out of range give nothing. Top-level numbers, so a `where` box filters them."""
    try:
        gps = image.getexif().get_ifd(_GPS_IFD)
    except Exception:  # noqa: BLE001  (EXIF Pillow cannot read is as good as none)
        return {}
    if not gps or (_text(gps.get(_GPS_STATUS)) or "A").upper() == "V":
        return {}
    lat = _degrees(gps.get(_LAT), _text(gps.get(_LAT_REF)), "NS", 90)
    lon = _degrees(gps.get(_LON), _text(gps.get(_LON_REF)), "EW", 180)
    if lat is None or lon is None or (lat == 0 and lon == 0):
        return {}
    out = {"lat": lat, "lon": lon}
    altitude = _number(gps.get(_ALT))
    if altitude is not None:
        below = gps.get(_ALT_REF) in (1, b"\x01")
        out["altitude"] = round(-altitude if below else altitude, 1)
    return out


def _degrees(dms, ref: str | None, refs: str, limit: float) -> float | None:
    # degrees, minutes, seconds (three rationals) and N/S or E/W -> signed decimal degrees
    if not ref or ref.upper() not in refs or not isinstance(dms, tuple) or len(dms) != 3:
        return None
    parts = [_number(x) for x in dms]
    if any(x is None or x < 0 for x in parts) or parts[1] >= 60 or parts[2] >= 60:
        return None
    value = parts[0] + parts[1] / 60 + parts[2] / 3600
    if value > limit:
        return None
    return round(-value if ref.upper() == refs[1] else value, 6)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) else None


def _text(value) -> str | None:
    # EXIF strings come NUL-padded, sometimes as bytes
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ").strip() or None
