"""`simsearch index edit --metadata FILE`: metadata from a file onto items already in a gallery, in a stopped
index (or Milvus) or through a running service (PATCH /index/{id}); and `simsearch index edit --label/--where
... --set JSON / --set-label LABEL`: one label and/or merge patch onto every item a filter selects (PATCH /index).

`index build --metadata` and `index upload --metadata` give new images their metadata; an item indexed
before keeps its own. This is for those: an album, a product, a date added afterwards, without embedding
anything again. Each row is a JSON merge patch (RFC 7396) on its item's metadata: each key given is set,
and in JSON Lines a key given as null is removed; keys not given are kept. Applying a file twice gives the
same metadata, so an interrupted run is simply run again.
"""
from __future__ import annotations

import sys
from urllib.parse import quote

from . import _galleries as g, _http
from ._env import ClientEnv
from ._errors import CliError
from ._metadata_file import read_metadata_file


def register_index(isub) -> None:
    """`simsearch index edit`'s options (the index command's subparsers call this)."""
    e = isub.add_parser("edit", help="set metadata of items already indexed, from a file or by filter (no embedding)",
                        description="Apply each row of --metadata to the item of its id, as a JSON merge patch on "
                                    "its metadata: each key given is set (in JSON Lines a key given as null is "
                                    "removed), the others kept; labels, vectors and thumbnails stay. For items "
                                    "indexed before their metadata was at hand (`index build --metadata` gives new "
                                    "images theirs). Or, instead of --metadata, select items with --label and/or "
                                    "--where (as `index delete` does) and give each of them --set (a merge patch) "
                                    "and/or --set-label. In DATA while no service has it open, in Milvus, or with "
                                    "--url through a running service (PATCH /index/{id}, PATCH /index?where=...). "
                                    "Run again after an interruption: applying a change twice changes nothing more.")
    e.add_argument("--metadata", metavar="FILE",
                   help="the metadata to set, from a file: JSON Lines (.jsonl, one object a line: {\"id\": "
                        "\"cat/001.jpg\", \"album\": \"trip\", \"draft\": null}: album set, draft removed) or CSV "
                        "(.csv, a header with an id column; every other non-empty cell sets its column's key to "
                        "that string)")
    e.add_argument("--label", help="instead of --metadata: change every item with this label")
    e.add_argument("--where", metavar="JSON", help='instead of --metadata: change every item whose metadata matches, '
                                                   'e.g. \'{"album": "trip"}\' (docs/index.md, "Filters")')
    e.add_argument("--set", metavar="JSON", dest="set_metadata",
                   help='with --label/--where: a JSON merge patch on each selected item\'s metadata, e.g. '
                        '\'{"album": "trip 2024", "draft": null}\': album set, draft removed, the other keys kept')
    e.add_argument("--set-label", metavar="LABEL",
                   help="with --label/--where: the selected items' new label ('' removes it)")
    g.common_options(e, model=False, milvus=True)
    e.add_argument("--url", help="edit through a running service instead, e.g. http://127.0.0.1:8000")
    e.add_argument("--api-key", help="with --url: the service's API key for writes (default $SIMSEARCH_API_KEY, "
                                     "else the first key of $SIMSEARCH_API_KEY_FILE)")
    e.add_argument("--timeout", type=float, default=120, help="with --url: seconds to wait for one answer (120)")
    e.set_defaults(func=_run)


def _run(args) -> int:
    if args.url and args.milvus_uri:
        raise CliError("give --url (a running service) or --milvus-uri (Milvus itself), not both")
    open_store = lambda read_only: g.open_store(   # noqa: E731
        args.data, read_only, gallery=args.gallery, milvus_uri=args.milvus_uri,
        locked_hint=". While `simsearch serve` runs, edit through it: add --url")
    g.check_label_arg(args.label)
    selects = args.label is not None or args.where is not None
    changes = args.set_metadata is not None or args.set_label is not None
    if args.metadata is not None:
        if selects or changes:
            raise CliError("give --metadata FILE (a change for each item it names) or --label/--where with --set/"
                           "--set-label (one change for every item they select), not both")
        return edit(args, open_store)
    if not selects:
        raise CliError("give --metadata FILE, or --label and/or --where to select the items to change "
                       "(with --set/--set-label: it never changes every item unasked)")
    if not changes:
        raise CliError("with --label/--where, give --set JSON (a merge patch on their metadata) and/or --set-label "
                       "LABEL: nothing to change")
    return edit_where(args, open_store)


def edit_where(args, open_store) -> int:
    """Give every item args.label and args.where select args.set_label and/or the merge patch args.set_metadata,
    in the gallery (open_store(read_only) -> a store) or through args.url; prints how many changed."""
    where = g.where_arg(args.where)
    patch = None
    if args.set_metadata is not None:
        try:
            patch = g.user_json(args.set_metadata, "--set")
        except ValueError as exc:
            raise CliError(f"--set {args.set_metadata!r:.80} is not valid JSON: {exc}") from None
        if not isinstance(patch, dict):
            raise CliError(f"--set must be a JSON object (a merge patch: each key given is set, a key given as null "
                           f"removed), got {args.set_metadata!r:.80}")
    changes: dict = {} if patch is None else {"metadata": patch}
    if args.set_label is not None:
        changes["label"] = args.set_label or None   # '' removes it, as a label of "" does over HTTP
    n = _where_by_http(args, where, changes) if args.url else _where_in_store(open_store, args.label, where, changes)
    print(f"updated {n} item{'' if n == 1 else 's'}" + ("" if n else " (none matches --label/--where)"))
    return 0


def _where_in_store(open_store, label: str | None, where: dict | None, changes: dict) -> int:
    import index

    store = open_store(False)
    try:
        kw = {"new_label": changes["label"]} if "label" in changes else {}
        return len(store.update_where(label, where, metadata_patch=changes.get("metadata"), **kw))
    except index.StoreError as exc:
        raise CliError(f"{exc}; nothing was changed" if isinstance(exc, index.InvalidItemError) else str(exc)) \
            from None
    finally:
        store.close()


def _where_by_http(args, where: dict | None, changes: dict) -> int:
    import json

    import httpx

    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    params = {} if args.gallery == "default" else {"gallery": args.gallery}
    if args.label is not None:
        params["label"] = args.label
    if where is not None:
        params["where"] = json.dumps(where)
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {}, timeout=args.timeout) as client:
            r = _http.request(client, "PATCH", "/index", params=params, json=changes)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    if r.status_code == 200:
        return int(r.json()["updated"])
    if r.status_code == 422:
        raise CliError(f"{_http.error_message(r)}; nothing was changed")
    raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))


def edit(args, open_store) -> int:
    """Apply args.metadata to the gallery (open_store(read_only) -> a store, or args.url for a service).
    Prints what was changed and which rows name no item; 1 when rows were given and none named an item."""
    rows = read_metadata_file(args.metadata)
    if not rows:
        print(f"--metadata {args.metadata}: no rows; nothing to change")
        return 0
    changed, missing = (_by_http(args, rows) if args.url else _in_store(open_store, rows))
    print(f"updated the metadata of {changed} item{'' if changed == 1 else 's'}")
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        print(f"--metadata {args.metadata}: {len(missing)} of its {len(rows)} rows name no item in gallery "
              f"{args.gallery!r} ({shown}); ids are the images' paths relative to the folder that was indexed",
              file=sys.stderr)
    return 1 if changed == 0 else 0


def _in_store(open_store, rows: dict[str, dict]) -> tuple[int, list[str]]:
    import index
    from tqdm import tqdm

    store = open_store(False)
    changed, missing = 0, []
    try:
        held = store.has_ids(list(rows))
        for id_, patch in tqdm(rows.items(), total=len(rows), unit="item", desc="editing", disable=None):
            if id_ not in held:
                missing.append(id_)
                continue
            try:
                store.update(id_, metadata_patch=patch)
            except KeyError:   # deleted meanwhile (a Milvus gallery others write to)
                missing.append(id_)
                continue
            except index.InvalidItemError as exc:
                raise CliError(f"item {id_!r}: {exc} (mend --metadata, then run again: what was applied stays, "
                               "and applying it again changes nothing)") from None
            changed += 1
    except index.StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    return changed, missing


def _by_http(args, rows: dict[str, dict]) -> tuple[int, list[str]]:
    import httpx
    from tqdm import tqdm

    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    params = {} if args.gallery == "default" else {"gallery": args.gallery}
    changed, missing = 0, []
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {}, timeout=args.timeout) as client, \
                tqdm(total=len(rows), unit="item", desc="editing", disable=None) as bar:
            for id_, patch in rows.items():
                r = _http.request(client, "PATCH", f"/index/{quote(id_, safe='')}", params=params,
                             json={"metadata": patch})
                bar.update(1)
                if r.status_code == 404 and '"not_found"' in r.text:
                    missing.append(id_)
                elif r.status_code == 200:
                    changed += 1
                elif r.status_code == 422:
                    raise CliError(f"item {id_!r}: {_http.error_message(r)} (mend --metadata, then run again: what "
                                   "was applied stays, and applying it again changes nothing)")
                else:
                    raise CliError(_http.fatal(r.status_code, _http.error_message(r), url))
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    return changed, missing
