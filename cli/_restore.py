"""`simsearch index restore --url URL --gallery NAME [--replace] FILE_OR_DEST`: a backup sent to a running service's PUT
/galleries/NAME/backup, which makes gallery NAME of it: the other half of `index backup --url`, for an operator who
cannot reach the service's disk. The file is streamed from disk (never whole in memory), its size sent as
Content-Length so that the service checks its room first."""
from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import quote

from . import _http
from ._env import ClientEnv
from ._errors import CliError

# index's, without importing index (and FAISS) for an upload
DB_NAME = "store.sqlite3"
GALLERY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")   # the names index.check_gallery_name takes
INCOMPLETE_NAME = "incomplete.json"   # index._incomplete's mark beside a store that holds a part of its source
CHUNK = 1 << 20
# the service's 429 and 503 codes answered before it reads a byte of a body: the file is sent again after them
BEFORE_THE_BODY = frozenset({"rate_limited", "overloaded", "not_ready"})


def register_index(isub) -> None:
    """`simsearch index restore`'s options (the index command's subparsers call this)."""
    r = isub.add_parser("restore", help="restore a backup into a running service as a new gallery (PUT "
                                        "/galleries/NAME/backup)",
                        description="Send a backup to the service at --url, which makes gallery --gallery of it "
                                    "and serves it at once: the file GET /galleries/NAME/backup sent (curl -o), or "
                                    "the DEST folder `index backup --url` or `index backup` made (the gallery's "
                                    "store.sqlite3 in it is sent). The service checks it first (a sound store of "
                                    "its model) and keeps nothing of a file it refuses. The name must be new, unless "
                                    "--replace (the default gallery, which always exists, is also replaced while it "
                                    "holds no items). Prints what the service made; a refusal is one line and exit "
                                    "status 2.")
    r.add_argument("source", metavar="FILE_OR_DEST", help="the backup file, or a folder `index backup` made")
    r.add_argument("--url", required=True, help="the running service, e.g. http://127.0.0.1:8000")
    r.add_argument("--gallery", metavar="NAME",
                   help="the gallery to make of it ('default' for the default one); without it, the gallery the "
                        "store was backed up as, from its place in the folder (DEST/galleries/NAME/index: NAME), "
                        "else the default one")
    r.add_argument("--replace", action="store_true",
                   help="replace the gallery of that name, when there is one: its items are gone once the service "
                        "answers (`index backup --url` first keeps them); it is replaced only by a file the service "
                        "has checked and opened")
    r.add_argument("--api-key", help="an API key that may write the gallery (default $SIMSEARCH_API_KEY, else the "
                                     "first key of $SIMSEARCH_API_KEY_FILE); a `read` key is refused")
    r.add_argument("--timeout", type=float, default=600,
                   help="seconds to wait for the service between parts and for its answer, which comes once the "
                        "gallery is checked and open (600)")
    r.set_defaults(func=restore, imports_user_models=False)


def restore(args) -> int:
    """PUT the backup in args.source to args.url as gallery args.gallery; print the service's answer."""
    import httpx

    name = args.gallery
    if name is None:
        file = backup_file(Path(args.source), "default")
        name, said = own_gallery(file)
    else:
        if not GALLERY_NAME.fullmatch(name):
            raise CliError(f"--gallery: a gallery name is 1 to 63 lower-case letters, digits, - and _, starting with "
                           f"a letter or digit; got {name[:80]!r}")
        file, said = backup_file(Path(args.source), name), ""
    url = args.url.rstrip("/")
    key = ClientEnv.read().write_key(args.api_key)
    headers = {"Content-Type": "application/vnd.sqlite3", "Content-Length": str(file.stat().st_size)}
    if key:
        headers["X-API-Key"] = key
    if (file.parent / INCOMPLETE_NAME).is_file():   # the backup of a gallery marked incomplete: restored marked
        headers["X-Simsearch-Incomplete"] = "true"
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as client:
            r = _sent(client, f"/galleries/{quote(name, safe='')}/backup", file, headers,
                      {"replace": "true"} if args.replace else None)
    except httpx.HTTPError as exc:
        raise CliError(f"the backup did not reach the service at {url} whole ({type(exc).__name__}: {exc}); "
                       f"`GET {url}/galleries` says whether gallery {name!r} was made") from None
    if r.status_code != 201:
        raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))
    body = r.json()
    items = body.get("count")
    replaced = r.headers.get("x-simsearch-replaced-items")
    instead = f", in place of the gallery of {replaced} items it held" if replaced is not None else ""
    print(f"{name}: restored {items} item{'' if items == 1 else 's'} (model {r.headers.get('x-simsearch-model')}, "
          f"up to write {r.headers.get('x-simsearch-last-seq')}) from {file}{said} to {url}{instead}; it serves now")
    return 0


def _sent(client, path: str, file: Path, headers: dict, params: dict | None):
    """The service's answer to the PUT of `file`. Sent again (read again from the file) only after a 429 or 503
    with Retry-After that the service gives before it takes the body (a rate limit, the concurrency cap, loading),
    at most _http.RETRIES times: a refusal of the file itself (422, 409, a 503 once it was received) is the same
    at every sending, and a backup may be gigabytes. Never sent twice after a connection drops, as a restore may
    have been made by then."""
    for tries in range(_http.RETRIES + 1):
        r = client.request("PUT", path, content=_FileBody(file), headers=headers, params=params)
        if r.status_code not in (429, 503) or "retry-after" not in r.headers or tries == _http.RETRIES or \
                _error_code(r) not in BEFORE_THE_BODY:
            return r
        time.sleep(_http.retry_after(r.headers.get("Retry-After")))
    return r


def _error_code(r) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def own_gallery(file: Path) -> tuple[str, str]:
    """The gallery the store `file` was backed up as, from its place (galleries/NAME/index/store.sqlite3: NAME; else
    the default one), and the words the printed line says it with."""
    place = file.parent
    if place.name == "index" and place.parent.parent.name == "galleries" and GALLERY_NAME.fullmatch(
            place.parent.name):
        return place.parent.name, f" (gallery {place.parent.name!r}, as its place in the folder says; --gallery " \
                                  "restores it under another name)"
    return "default", " (as the default gallery: no --gallery given)"


def backup_file(source: Path, name: str) -> Path:
    """The store file to send for gallery `name`: `source` itself, or in a folder `index backup` made, the
    gallery's place in it (DEST/galleries/NAME/index, DEST/index for the default one), else its one store;
    CliError saying what was looked for."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise CliError(f"{source} is neither a backup file nor a folder")
    place = source / "index" if name == "default" else source / "galleries" / name / "index"
    for candidate in (place / DB_NAME, source / DB_NAME):
        if candidate.is_file():
            return candidate
    found = sorted(source.rglob(DB_NAME))
    if len(found) == 1:
        return found[0]
    held = ", ".join(str(p.relative_to(source)) for p in found[:5]) or "none"
    raise CliError(f"{source} holds no backup of gallery {name!r} (no {place.relative_to(source) / DB_NAME}); the "
                   f"stores in it: {held}. Give --gallery the name it was backed up as, or the file itself")


class _FileBody:
    """The file's bytes as a request body, read anew each time it is sent (a retry after a 429)."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self):
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
