"""GET /galleries/{name}/backup: a consistent copy of a gallery's store, downloaded over HTTP, for operators who
cannot reach the service's disk (`simsearch index backup` needs it; `simsearch index backup --url` downloads this).

The copy is the open store's (Store.backup: SQLite's online backup in one read transaction through the store's
own connection, so that a drop or a restore's replace meanwhile waits for it to end; every write acknowledged
before the request is in it) made into a folder of the service's temporary folder (TMPDIR), checked for room first, then
streamed; the folder is removed as the sending begins (the open file is read to its end) and the file closed
however the answer ends (sent, failed, or the client gone). The file is the bare store.sqlite3, which `simsearch
serve --data DATA` serves placed as DATA/index/store.sqlite3 (the default gallery) or
DATA/galleries/NAME/index/store.sqlite3 (the FAISS snapshot is derived: rebuilt at the first opening).

One backup at a time per process: it costs a whole copy of the store in TMPDIR and a client may take it as slowly
as it likes, so another is refused (429 `backup_running`, Retry-After) while one is made or sent. A backup counts
against the concurrency cap (SIMSEARCH_MAX_CONCURRENCY) while its copy is made, not while it is sent
(ConcurrencyLimitMiddleware gives its slot back as the answer begins): a download at the client's pace holds no
slot that searches need. A download that takes nothing for SIMSEARCH_BACKUP_STALL_SECONDS is cut off, its copy
closed.

A backup hands over every item of the gallery (vectors, metadata, thumbnails) at once, so it is not a read: where
the service has API keys it always needs one (reads open or not), a key that may write the gallery (a `read` key
is refused; a `galleries=` key only for its galleries). AuthMiddleware decides that before the route runs
(_auth.key_needed and refused_to_read_keys, _paths.is_backup). A service without keys serves it to anyone, as it
lets anyone read and write everything.

PUT /galleries/{name}/backup is the other half: the body, a file as GET sends it, becomes gallery NAME. It is
streamed into a folder of the data folder (its disk: placing it is one rename), after a check of room where its
Content-Length is given, up to SIMSEARCH_MAX_RESTORE_BYTES (BodyLimitMiddleware's SIMSEARCH_MAX_BODY_BYTES is sized
for images), then checked as `index backup --url` checks a download (index.receive_backup: SQLite's integrity check,
a store's record, a schema this simsearch knows and no schema object it does not make, vectors of the model's
dimension, JSON metadata, no byte past its pages), refused when it holds another model's vectors, and only then
moved to its place and opened (Service.restore_gallery). A restore refused or cut off leaves nothing behind. It
takes the key a write takes (a `read` key is refused, as for GET), and a read-only service refuses it as any write.

HEAD /galleries/{name}/backup has a route of its own, so that HeadMiddleware does not run the GET (a whole copy made
and none of it sent): the headers the store tells without a copy."""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path as FsPath

import anyio
import anyio.to_thread
import anyio.from_thread
from fastapi import Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ._answers import _ERRORS
from ._errors import ApiError
from ._params import _router, _service
from ._schemas import GalleryOut
from ._service import DEFAULT_GALLERY, GALLERY_NAME, Service, gallery_exists, too_many_galleries

log = logging.getLogger("simsearch.app")

router = _router()

MEDIA_TYPE = "application/vnd.sqlite3"
ITEMS_HEADER = "X-Simsearch-Items"          # items in the copy
LAST_SEQ_HEADER = "X-Simsearch-Last-Seq"    # the number of the last write in it
MODEL_HEADER = "X-Simsearch-Model"          # the model its vectors are of: serve it with that model
INCOMPLETE_HEADER = "X-Simsearch-Incomplete"   # "true": the store is a part of its source (index/_incomplete.py)
REPLACED_HEADER = "X-Simsearch-Replaced-Items"   # a restore replaced a gallery: the items it held
CHUNK = 1 << 20
# A download is cut off when a piece of SEND_PIECE bytes waits SIMSEARCH_BACKUP_STALL_SECONDS (60) to be taken (the
# client reads nothing, or under about 1 kB a second: as BodyLimitMiddleware's slowest body), its copy closed.
SEND_PIECE = 1 << 16
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
    g = None
    try:
        g = await service.gallery(name)   # 404 naming the nearest names when there is none
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
        # An open gallery is copied through its store's own connection, so that a drop or a restore's replace
        # meanwhile waits for the copy (a store closing already: 503); one of another model's vectors, never
        # opened, by its folder's path
        copied = await anyio.to_thread.run_sync(index.backup, source, folder / "store") if g is None else \
            await anyio.to_thread.run_sync(g.store.backup, folder / "store")
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
        return _TempFileResponse(folder, folder / "store" / "store.sqlite3", headers, running,
                                 service.settings.backup_stall_seconds)
    except BaseException as exc:
        running.name = None
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
        if isinstance(exc, index.StorageError) and exc.full:
            raise ApiError(507, "insufficient_storage", f"the service's temporary folder ran out of room while "
                           f"copying gallery {name!r} (it needs about {_needs(source)} bytes); the operator "
                           "can free space there, or point TMPDIR at a larger disk") from None
        if isinstance(exc, index.StoreError) and not (source / "store.sqlite3").exists():
            raise ApiError(404, "gallery_not_found", f"gallery {name!r} was deleted while it was copied") from None
        # A copy by path (a gallery not opened), or one of a replica whose writer dropped the gallery, replaced it
        # or made it anew, may meet the files going in many ways ("disk I/O error", "no such table", the file gone
        # between two looks): passing, not a 500
        if isinstance(exc, Exception) and g is not None and (service.galleries.get(name) is not g
                                                             or g.store.folder_changed()):
            raise ApiError(503, "index_unavailable", f"gallery {name!r} was deleted, replaced or made anew while it "
                           "was copied; retry", {"Retry-After": "1"}) from None
        raise


_RESTORE_ERRORS = {   # 403's reasons are the document's (_openapi.forbidden_reasons), as for every route
    **{k: _ERRORS[k] for k in (401, 403, 429, 503)},
    405: {**_ERRORS[503], "description": "`read_only`: this service serves its galleries read-only (a replica)"},
    409: {**_ERRORS[409], "description": "`gallery_exists`: a gallery has the name, and replace=true was not given "
                                         "(the default one is then replaced only while it holds no items); "
                                         "`model_mismatch`: the file holds another model's vectors"},
    413: {**_ERRORS[413], "description": "the body is larger than SIMSEARCH_MAX_RESTORE_BYTES"},
    415: {**_ERRORS[415], "description": "a multipart form: send the file itself as the body"},
    422: {**_ERRORS[422], "description": "`not_a_store`: the body is not a sound simsearch store (what is wrong is "
                                         "said); `too_many_galleries`"},
    501: _BACKUP_ERRORS[501],
    507: {**_ERRORS[507], "description": "the data folder's disk has no room for the file (the message says how many "
                                         "bytes it needs and has), or filled while it came: nothing was kept"},
}


@router.put("/galleries/{name}/backup", status_code=201, response_model=GalleryOut, tags=["gallery"],
            summary="restore a backup (the file GET /galleries/NAME/backup sends) as gallery NAME, which is new",
            openapi_extra={"requestBody": {"required": True, "content": {
                MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
            responses={201: {"description": "the gallery was made from the file, and serves", "headers": {
                **{k: _HEADERS[k] for k in (ITEMS_HEADER, LAST_SEQ_HEADER, MODEL_HEADER)},
                REPLACED_HEADER: {"required": False, "schema": {"type": "integer"},
                                  "description": "the items of the gallery it replaced (replace=true, or the default "
                                                 "gallery while empty)"}}}, **_RESTORE_ERRORS})
async def restore(request: Request, name: str = Path(pattern=GALLERY_NAME, description=_NAME_DOC),
                  replace: bool = Query(False, description="replace the gallery of that name, when there is one "
                                                           "(its items are gone once the answer comes; GET its backup "
                                                           "first to keep them); false: a name in use is a 409")
                  ) -> JSONResponse:
    import index

    service = _service(request, write=True)
    s = service.settings
    if s.milvus_uri:
        raise ApiError(501, "not_supported", "this service keeps its galleries in Milvus, where a backup file is not "
                       "restored: put it in a data folder (`simsearch index backup --url` makes one, DEST), then "
                       f"`simsearch index copy --data DEST --gallery {name} --to-milvus-uri URI` copies it into Milvus "
                       "(docs/index.md)")
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "a multipart form: send the backup file itself as the body "
                       f"(curl -T FILE, Content-Type {MEDIA_TYPE} or application/octet-stream)")
    declared = _declared_length(request, s.max_restore_bytes)
    names = await anyio.to_thread.run_sync(service.gallery_names)   # refused before a byte of the body is read
    if name not in names and len(names) >= s.max_galleries:   # (checked again under the lock: restore_gallery)
        raise too_many_galleries(name, s.max_galleries)
    if not replace and name in names:
        if name != DEFAULT_GALLERY:
            raise gallery_exists(name)
        if held := await service.items_held(name):   # the default gallery is replaced while it is empty
            raise gallery_exists(name, held)
    stage = await anyio.to_thread.run_sync(_new_stage, s.data_dir, name, declared)
    try:
        write = _body_writer(request, s.max_restore_bytes, name)
        try:
            got = await anyio.to_thread.run_sync(index.receive_backup, stage, name, write,
                                             (service.model_id, service.embedder.dim))
        except (index.StoreError, OSError) as exc:
            # out of open files: the service's trouble, not the file's (SQLite's "unable to open database file")
            refused = service.files_refusals.answer(exc, f"the backup of gallery {name!r} was not received or checked "
                                                         "(nothing of it was kept)")
            if refused is not None:
                raise refused from None
            if not isinstance(exc, index.StoreError):
                raise
            if isinstance(exc, index.StorageError) and exc.full:
                log.error("restore of gallery %s refused: %s", name, exc)
                raise ApiError(507, "insufficient_storage", f"the data folder's disk filled while the backup of "
                               f"gallery {name!r} came ({_free_space(s.data_dir)} bytes free now): nothing of it was "
                               "kept; the operator can free space there") from None
            # the staging folder's paths are the service's own: "the body" to the client
            raise ApiError(422, "not_a_store", re.sub(re.escape(str(stage)) + r"\S*", "the body", str(exc))) from None
        if got["model_id"] != service.model_id:
            raise ApiError(409, "model_mismatch", f"the file holds the vectors of model {got['model_id']!r}, not of "
                           f"{service.model_id!r}, the model this service embeds with, so it could not be searched or "
                           "written here: restore it on a service of that model, or move it to this one first "
                           "(`simsearch index reembed`); nothing was kept")
        _, count, replaced = await service.restore_gallery(name, stage, replace)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(stage, ignore_errors=True))
    headers = {ITEMS_HEADER: str(got["items"]), LAST_SEQ_HEADER: str(got["last_seq"]), MODEL_HEADER: got["model_id"]}
    if replaced is not None:
        headers[REPLACED_HEADER] = str(replaced)
    log.info("gallery %s restored from a backup: %d items, up to write %d, %d bytes%s", name, got["items"],
             got["last_seq"], got["bytes"], "" if replaced is None else f"; it replaced one of {replaced} items")
    return JSONResponse(GalleryOut(name=name, count=count, open=True).model_dump(), status_code=201, headers=headers)


def _declared_length(request: Request, limit: int) -> int | None:
    """The body's Content-Length (None when it is sent chunked); 413 body_too_large past `limit`."""
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    if declared is not None and declared > limit:
        raise ApiError(413, "body_too_large", f"Content-Length {declared} is larger than the limit of {limit} bytes "
                       "for a backup file (SIMSEARCH_MAX_RESTORE_BYTES)")
    return declared


def _free_space(folder: FsPath) -> int:
    return shutil.disk_usage(folder).free


def _new_stage(data_dir: FsPath, name: str, declared: int | None) -> FsPath:
    """A new folder in the data folder (on its disk, so that the store received in it takes its place with one
    rename), when that disk has room for `declared` bytes; 507 insufficient_storage naming the bytes needed and
    free when it has not. Its name is no gallery's (a leading dot), in no gallery's folder."""
    free = _free_space(data_dir)
    if declared is not None and free < declared:
        log.error("restore of gallery %s refused: it needs %d bytes in %s, which has %d free", name, declared,
                  data_dir, free)
        raise ApiError(507, "insufficient_storage", f"the backup of gallery {name!r} needs {declared} bytes on the "
                       f"service's data disk, which has {free} free; the operator can free space there")
    import index

    return index.new_restore_folder(data_dir, name)


def _body_writer(request: Request, limit: int, name: str):
    """receive_backup's `write`: the request's body, streamed from a worker thread into its file (never whole in
    memory); 413 body_too_large once it passes `limit` bytes (a body sent without Content-Length), 400 when the
    client goes away, OSError ENOSPC as the disk fills. Returns mark_incomplete's arguments when the client says
    (X-Simsearch-Incomplete: true, as GET says it) that the file is a backup of a gallery marked incomplete."""
    incomplete = request.headers.get(INCOMPLETE_HEADER, "").lower() == "true"

    def write(out) -> dict | None:
        chunks = request.stream().__aiter__()
        received = 0
        while True:
            try:
                chunk = anyio.from_thread.run(_next_chunk, chunks)
            except ClientDisconnect:
                raise ApiError(400, "client_disconnected", f"the client went away after {received} bytes of the "
                               f"backup of gallery {name!r}: nothing of it was kept") from None
            if chunk is None:
                break
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "body_too_large", f"the body is larger than the limit of {limit} bytes for a "
                               "backup file (SIMSEARCH_MAX_RESTORE_BYTES)")
            out.write(chunk)
        if not incomplete:
            return None
        return {"command": f"PUT /galleries/{name}/backup", "source": "a backup file",
                "said": f"it was restored (PUT /galleries/{name}/backup) from the backup of a gallery marked "
                        "incomplete (a copy into it did not finish), so it holds a part of its source"}

    return write


async def _next_chunk(chunks) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


@router.head("/galleries/{name}/backup", tags=["gallery"], response_class=Response, include_in_schema=False)
async def backup_head(request: Request, name: str = Path(pattern=GALLERY_NAME, description=_NAME_DOC)) -> Response:
    """HEAD of the backup, without making a copy (HeadMiddleware would run the GET, which makes one and sends none
    of it): the headers the store tells as it is now. Left out: Content-Length and X-Simsearch-Last-Seq, which the
    copy knows once made; X-Simsearch-Items is the count now (a GET's copy may hold later writes). The refusals
    are the GET's (401, 403, 404, 409 never: a gallery of another model is backed up, 501), bodiless."""
    import index

    service = _service(request)
    if service.settings.milvus_uri:
        return Response(status_code=501)
    try:
        await service.gallery(name)
    except ApiError as exc:
        if exc.code != "model_mismatch":
            return Response(status_code=exc.status, headers=exc.headers)
    source = index.gallery_path(service.settings.data_dir, name)
    try:
        items, model_id = await anyio.to_thread.run_sync(_store_now, source)
    except index.StoreError:   # deleted this moment
        return Response(status_code=404)
    taken = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = {"Content-Type": MEDIA_TYPE, "Content-Disposition": f'attachment; filename="simsearch-{name}-{taken}'
               '.sqlite3"', "Cache-Control": "no-store", ITEMS_HEADER: str(items)}
    if model_id.isascii():
        headers[MODEL_HEADER] = model_id
    if index.incomplete(source):
        headers[INCOMPLETE_HEADER] = "true"
    answer = Response(headers=headers)
    del answer.headers["content-length"]   # the copy's, unknown until it is made: not the 0 of this empty answer
    return answer


def _store_now(source: FsPath) -> tuple[int, str]:
    """The items and the model of the store in `source`, read without copying it."""
    import index

    with index.StoreReader(source) as reader:
        return reader.count(), reader.model_id


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
    to a closed connection without a word), as one that takes nothing for `stall` seconds is cut off, and the file
    is closed. `running` is given back as soon as the last byte is out (a client may ask for the next backup on the
    same connection then), or when the answer ends otherwise."""

    def __init__(self, folder: FsPath, file: FsPath, headers: dict[str, str], running: _Running, stall: float):
        super().__init__(media_type=MEDIA_TYPE, headers=headers)
        self.folder, self.file, self.running, self.stall = folder, file, running, stall
        self.size = file.stat().st_size
        self.headers["content-length"] = str(self.size)
        self.all_sent = False   # every byte handed to the server: a disconnect now is no cut-off

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
                with anyio.move_on_after(self.stall) as waited:
                    await send({"type": "http.response.body", "body": chunk[at:at + SEND_PIECE], "more_body": True})
                if waited.cancelled_caught:
                    log.warning("backup download cut off: the client took nothing for %g s (%d of %s bytes sent); "
                                "its temporary copy gone", self.stall, sent, self.headers["content-length"])
                    return   # uvicorn closes the connection of an answer left unfinished
                sent += len(chunk[at:at + SEND_PIECE])
                if sent >= self.size:
                    # the last byte is out: give the slot back now, before another read of the file (a thread,
                    # which a client that has read it all and asks again on a new connection could overtake)
                    self.all_sent = True
                    self.running.name = None
        # every byte is out: the copy is closed and the next backup may begin before the answer ends, so that a
        # client that takes one backup after another on one connection (curl with two URLs, a session) is not
        # refused the second, which it can ask for as soon as it has read the last byte
        with anyio.CancelScope(shield=True):
            await f.aclose()
        self.running.name = None
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch_disconnect(self, receive: Receive, cancel: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.all_sent:   # uvicorn also answers http.disconnect once the answer is complete
            log.info("backup download cut off by the client: stopped, its temporary copy gone")
        cancel.cancel()
