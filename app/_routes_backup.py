"""GET /galleries/{name}/backup: a consistent copy of a gallery's store, downloaded over HTTP, for operators who
cannot reach the service's disk (`simsearch index backup` needs it; `simsearch index backup --url` downloads this).

The copy is index.backup's (SQLite's online backup in one read transaction: every write acknowledged before the
request is in it) made into a folder of the service's temporary folder (TMPDIR), checked for room first, then
streamed; the folder is removed as the sending begins (the open file is read to its end) and the file closed
however the answer ends (sent, failed, or the client gone). The file is the bare store.sqlite3, which `simsearch
serve --data DATA` serves placed as DATA/index/store.sqlite3 (the default gallery) or
DATA/galleries/NAME/index/store.sqlite3 (the FAISS snapshot is derived: rebuilt at the first opening).

A backup hands over every item of the gallery (vectors, metadata, thumbnails) at once, so it is not a read: where
the service has API keys it always needs one (reads open or not), a key that may write the gallery (a `read` key
is refused; a `galleries=` key only for its galleries). AuthMiddleware decides that before the route runs
(_auth.key_needed and refused_to_read_keys, _paths.is_backup). A service without keys serves it to anyone, as it
lets anyone read and write everything."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path as FsPath

import anyio
import anyio.to_thread
from fastapi import Path, Request, Response
from starlette.types import Receive, Scope, Send

from ._answers import _ERRORS
from ._errors import ApiError
from ._params import _router, _service
from ._service import GALLERY_NAME, Service

log = logging.getLogger("simsearch.app")

router = _router()

MEDIA_TYPE = "application/vnd.sqlite3"
ITEMS_HEADER = "X-Simsearch-Items"          # items in the copy
LAST_SEQ_HEADER = "X-Simsearch-Last-Seq"    # the number of the last write in it
MODEL_HEADER = "X-Simsearch-Model"          # the model its vectors are of: serve it with that model
INCOMPLETE_HEADER = "X-Simsearch-Incomplete"   # "true": the store is a part of its source (index/_incomplete.py)
CHUNK = 1 << 20

_HEADERS = {
    "Content-Disposition": {"required": True, "schema": {"type": "string"}, "description": "attachment; "
                            "filename=\"simsearch-NAME-YYYYMMDDTHHMMSSZ.sqlite3\" (the gallery, and when the copy "
                            "was taken, UTC)"},
    "Cache-Control": {"required": True, "schema": {"type": "string", "enum": ["no-store"]},
                      "description": "a copy of the gallery at one moment: never kept by a cache"},
    ITEMS_HEADER: {"required": True, "schema": {"type": "integer"}, "description": "items in the copy"},
    LAST_SEQ_HEADER: {"required": True, "schema": {"type": "integer"},
                      "description": "the sequence number of the last write in the copy"},
    MODEL_HEADER: {"required": False, "schema": {"type": "string"},
                   "description": "the model that made the gallery's vectors (serve the copy with it)"},
    INCOMPLETE_HEADER: {"required": False, "schema": {"type": "string", "enum": ["true"]},
                        "description": "the gallery is marked incomplete: a copy into it (`index copy`, `index "
                                       "reembed`) did not finish, so the backup holds a part of its source"},
}
_BACKUP_ERRORS = {   # 403's reasons are the document's (_openapi.forbidden_reasons), as for every route
    **{k: _ERRORS[k] for k in (401, 403, 404, 422, 429, 503)},
    501: {**_ERRORS[503], "description": "the galleries are in Milvus: `simsearch index copy` copies them"},
    507: {**_ERRORS[507], "description": "the service's temporary folder has no room for the copy (the message "
                                         "says how many bytes it needs)"},
}
_NAME_DOC = "the gallery's name; `default` for the default one (DATA/index)"


@router.get("/galleries/{name}/backup", tags=["gallery"], response_class=Response,
            summary="download a consistent copy of the gallery's store (store.sqlite3), taken while it serves",
            responses={200: {"content": {MEDIA_TYPE: {}}, "headers": _HEADERS}, **_BACKUP_ERRORS})
async def backup(request: Request, name: str = Path(pattern=GALLERY_NAME, description=_NAME_DOC)) -> Response:
    import index

    service = _service(request)
    if service.settings.milvus_uri:
        raise ApiError(501, "not_supported", "this service keeps its galleries in Milvus, which backs up its own data; "
                       f"to copy gallery {name!r} into a data folder, run `simsearch index copy --milvus-uri URI "
                       f"--gallery {name} --to-data DEST` (docs/index.md)")
    try:
        await service.gallery(name)   # 404 naming the nearest names when there is none
    except ApiError as exc:
        # A gallery of another model's vectors is never opened to serve (409), yet a backup needs no model: its
        # store is copied from its folder as for any other, and X-Simsearch-Model names the model it holds. The
        # operator without disk access gets it out this way (or deletes it).
        if exc.code != "model_mismatch":
            raise
    source = index.gallery_path(service.settings.data_dir, name)
    folder = await anyio.to_thread.run_sync(_copy_to_temp, service, source, name)
    try:
        copied = await anyio.to_thread.run_sync(index.backup, source, folder / "store")
        taken = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = {"Content-Disposition": f'attachment; filename="simsearch-{name}-{taken}.sqlite3"',
                   "Cache-Control": "no-store", ITEMS_HEADER: str(copied["items"]),
                   LAST_SEQ_HEADER: str(copied["last_seq"])}
        if copied["model_id"] and copied["model_id"].isascii():
            headers[MODEL_HEADER] = copied["model_id"]
        if index.incomplete(source):
            headers[INCOMPLETE_HEADER] = "true"
        log.info("backup of gallery %s: %d items, up to write %d, %d bytes", name, copied["items"],
                 copied["last_seq"], copied["bytes"])
        return _TempFileResponse(folder, folder / "store" / "store.sqlite3", headers)
    except BaseException as exc:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
        if isinstance(exc, index.StorageError) and exc.full:
            raise ApiError(507, "insufficient_storage", f"the service's temporary folder ran out of room while "
                           f"copying gallery {name!r} (it needs about {_needs(source)} bytes); the operator "
                           "can free space there, or point TMPDIR at a larger disk") from None
        if isinstance(exc, index.StoreError) and not (source / "store.sqlite3").exists():
            raise ApiError(404, "gallery_not_found", f"gallery {name!r} was deleted while it was copied") from None
        raise


def _needs(source: FsPath) -> int:
    """The most bytes the copy of the store in `source` can take."""
    import index

    return index.backup_needs(source)


def _copy_to_temp(service: Service, source: FsPath, name: str) -> FsPath:
    """A new folder in the temporary folder for the copy of `source`, when that has room for it; 507
    insufficient_storage naming the bytes needed (and the folder, in the log) when it has not."""
    where = FsPath(tempfile.gettempdir())
    needs = _needs(source)
    free = shutil.disk_usage(where).free
    if free < needs:
        log.error("backup of gallery %s refused: it needs about %d bytes in %s, which has %d free (set TMPDIR to a "
                  "folder with room)", name, needs, where, free)
        raise ApiError(507, "insufficient_storage", f"the backup of gallery {name!r} needs about {needs} bytes of "
                       f"temporary space and the service's temporary folder has {free} free; the operator can free "
                       "space there, or point TMPDIR at a larger disk")
    return FsPath(tempfile.mkdtemp(prefix=f"simsearch-backup-{name}-", dir=where))


class _TempFileResponse(Response):
    """A file of a temporary folder sent as the answer. The folder is removed as soon as the file is open (the
    open file keeps its bytes until it is closed, and a process killed meanwhile leaves nothing behind), and in
    any case when the answer ends; a client that goes away stops the sending at once (uvicorn takes what is sent
    to a closed connection without a word), and the file is closed."""

    def __init__(self, folder: FsPath, file: FsPath, headers: dict[str, str]):
        super().__init__(media_type=MEDIA_TYPE, headers=headers)
        self.folder, self.file = folder, file
        self.headers["content-length"] = str(file.stat().st_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            f = await anyio.open_file(self.file, "rb")
            try:
                await self._remove_folder()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._watch_disconnect, receive, tasks.cancel_scope)
                    await self._send(f, send)
                    tasks.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await f.aclose()
        finally:
            await self._remove_folder()

    async def _remove_folder(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.folder, ignore_errors=True))

    async def _send(self, f, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        while chunk := await f.read(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch_disconnect(receive: Receive, cancel: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        log.info("backup download cut off by the client: stopped, its temporary copy gone")
        cancel.cancel()
