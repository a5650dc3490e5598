"""GET /galleries/{name}/backup: a consistent copy of a gallery's store, downloaded over HTTP, for operators who
cannot reach the service's disk (`simsearch index backup` needs it; `simsearch index backup --url` downloads this).

The copy is index.backup's (SQLite's online backup in one read transaction: every write acknowledged before the
request is in it) made into a folder of the service's temporary folder (TMPDIR), checked for room first, then
streamed; the folder is removed as the sending begins (the open file is read to its end) and the file closed
however the answer ends (sent, failed, or the client gone). The file is the bare store.sqlite3, which `simsearch
serve --data DATA` serves placed as DATA/index/store.sqlite3 (the default gallery) or
DATA/galleries/NAME/index/store.sqlite3 (the FAISS snapshot is derived: rebuilt at the first opening).

One backup at a time per process: it costs a whole copy of the store in TMPDIR and a client may take it as slowly
as it likes, so another is refused (429 `backup_running`, Retry-After) while one is made or sent. A backup counts
against the concurrency cap (SIMSEARCH_MAX_CONCURRENCY) while its copy is made, not while it is sent
(ConcurrencyLimitMiddleware gives its slot back as the answer begins): a download at the client's pace holds no
slot that searches need. A download that takes nothing for STALL_SECONDS is cut off, its copy closed.

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
# A download is cut off when a piece of SEND_PIECE bytes waits STALL_SECONDS to be taken (the client reads nothing,
# or under about 1 kB a second: as BodyLimitMiddleware's slowest body), its copy closed.
SEND_PIECE = 1 << 16
STALL_SECONDS = 60.0
RUNNING_RETRY_AFTER = 30   # seconds: Retry-After of the 429 while another backup runs

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
    **{k: _ERRORS[k] for k in (401, 403, 404, 422, 503)},
    429: {**_ERRORS[429], "description": "`backup_running`: another backup is being made or sent by this process (one "
                                         "at a time; Retry-After), or the rate limit"},
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
    running = _running(request)
    if running.name is not None:
        # the other gallery is not named: the caller's key may not be one of it
        raise ApiError(429, "backup_running", "another backup is being made or sent; this service makes one at a "
                       "time: retry once it is done", {"Retry-After": str(RUNNING_RETRY_AFTER)})
    running.name = name   # given back by the answer, once sent or cut off (or below, when none is made)
    try:
        folder = await anyio.to_thread.run_sync(_copy_to_temp, service, source, name)
    except BaseException:
        running.name = None
        raise
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
        return _TempFileResponse(folder, folder / "store" / "store.sqlite3", headers, running)
    except BaseException as exc:
        running.name = None
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
        if isinstance(exc, index.StorageError) and exc.full:
            raise ApiError(507, "insufficient_storage", f"the service's temporary folder ran out of room while "
                           f"copying gallery {name!r} (it needs about {_needs(source)} bytes); the operator "
                           "can free space there, or point TMPDIR at a larger disk") from None
        if isinstance(exc, index.StoreError) and not (source / "store.sqlite3").exists():
            raise ApiError(404, "gallery_not_found", f"gallery {name!r} was deleted while it was copied") from None
        raise


class _Running:
    """The backup this process is making or sending: the name of its gallery, or None."""

    def __init__(self) -> None:
        self.name: str | None = None


def _running(request: Request) -> _Running:
    """The app's one _Running (made at the first backup)."""
    state = request.app.state
    if getattr(state, "backup_running", None) is None:
        state.backup_running = _Running()
    return state.backup_running


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
    to a closed connection without a word), as one that takes nothing for STALL_SECONDS is cut off, and the file
    is closed. `running` is given back when the answer ends, however it ends."""

    def __init__(self, folder: FsPath, file: FsPath, headers: dict[str, str], running: _Running):
        super().__init__(media_type=MEDIA_TYPE, headers=headers)
        self.folder, self.file, self.running = folder, file, running
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
            self.running.name = None   # the file is closed: the next backup may begin
            await self._remove_folder()

    async def _remove_folder(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.folder, ignore_errors=True))

    async def _send(self, f, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sent = 0
        while chunk := await f.read(CHUNK):
            for at in range(0, len(chunk), SEND_PIECE):
                # uvicorn's send waits while the client has not taken what was sent before (its flow control)
                with anyio.move_on_after(STALL_SECONDS) as waited:
                    await send({"type": "http.response.body", "body": chunk[at:at + SEND_PIECE], "more_body": True})
                if waited.cancelled_caught:
                    log.warning("backup download cut off: the client took nothing for %g s (%d of %s bytes sent); "
                                "its temporary copy gone", STALL_SECONDS, sent, self.headers["content-length"])
                    return   # uvicorn closes the connection of an answer left unfinished
                sent += len(chunk[at:at + SEND_PIECE])
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch_disconnect(receive: Receive, cancel: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        log.info("backup download cut off by the client: stopped, its temporary copy gone")
        cancel.cancel()
