"""`simsearch index upload`: a folder or tar of images into a running service, over its HTTP API (the
service holds its index open, so `index build` cannot write to it meanwhile)."""
from __future__ import annotations

import functools
import io
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from . import _galleries as g, _http
from ._env import ClientEnv
from ._errors import CliError


def register_index(isub) -> None:
    """`simsearch index upload`'s options (the index command's subparsers call this)."""
    u = isub.add_parser("upload", help="send a folder or tar of images to a running service (resumable)",
                        description="Add the images of SOURCE to a running `simsearch serve` over its HTTP API (POST "
                                    "/index), as `index build` would add them to a stopped one: the path relative "
                                    "to SOURCE is the id, the class folder the label, {width, height} the metadata. Ids "
                                    "the service already holds are skipped (unless --replace), so an interrupted "
                                    "upload continues where it stopped; a file the service refuses is reported "
                                    "and skipped; 429 and 503 answers are waited out.")
    u.add_argument("source", help="a folder of images (searched recursively) or a .tar/.tar.gz of one")
    u.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    g.gallery_option(u)
    u.add_argument("--api-key", help="the service's API key for writes (default $SIMSEARCH_API_KEY, else the first "
                                     "key of $SIMSEARCH_API_KEY_FILE)")
    u.add_argument("--batch-size", type=int, default=32,
                   help="images per request (32; at most the service's SIMSEARCH_MAX_FILES_PER_REQUEST, 64 by default)")
    u.add_argument("--parallel", type=int, default=2, help="requests in flight (2)")
    u.add_argument("--timeout", type=float, default=120, help="seconds to wait for one answer (120)")
    u.add_argument("--replace", action="store_true", help="send every image, also those the service holds")
    u.add_argument("--no-labels", action="store_true", help="do not take labels from folder names")
    u.add_argument("--metadata", metavar="FILE", help=g.METADATA_HELP)
    u.add_argument("--exif", action="store_true", help=g.EXIF_HELP)
    u.add_argument("--gps", action="store_true", help=g.GPS_HELP)
    u.add_argument("--skip-duplicates", type=float, default=None, metavar="SCORE",
                   help="leave out each image whose cosine similarity with one the service holds (or this upload "
                        "sent before it) is at least SCORE, and name it: 0.98 catches copies, re-encoded or resized "
                        "(POST /index?skip_duplicates)")
    u.set_defaults(func=upload)

PAGE = 1000            # ids listed per GET /index when finding what the service already holds


def upload(args) -> int:
    import httpx

    _check_upload_options(args)
    dedupe = {"skip_duplicates": args.skip_duplicates} if args.skip_duplicates is not None else {}
    source = Path(args.source)
    if not source.exists():
        raise CliError(f"source {source} does not exist")
    images = g.scan(source, not args.no_labels)
    ids = images.ids
    if not ids:
        raise CliError(f"no images in {source}")
    extra = g.metadata_for(args.metadata, ids)
    _register_heif()
    key = ClientEnv.read().write_key(args.api_key)
    url = args.url.rstrip("/")
    try:
        # ?gallery= on every request (the default gallery takes none: a service from before galleries works)
        gallery = {"gallery": args.gallery} if args.gallery != "default" else None
        with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {}, params=gallery,
                          timeout=args.timeout) as client:
            have = set() if args.replace else _ids_in_service(client)
            todo = [i for i in ids if i not in have]
            print(f"{len(ids)} images in {source}{g.links_note(images.links)}: {len(ids) - len(todo)} already in the "
                  f"service, {len(todo)} to upload to {url}")
            kept = len(set(extra) & have)
            if kept:
                print(f"--metadata: {kept} of the images it names are in the service already and keep the metadata "
                      f"they have (`simsearch index edit --metadata {args.metadata} --url {args.url}"
                      f"{'' if args.gallery == 'default' else ' --gallery ' + args.gallery}` sets it on "
                      "them)", file=sys.stderr)
            sender = _Sender(client, url, images.labels, extra, dedupe, args.exif, args.gps, args.gallery)
            uploaded, rejected = _send_all(todo, images.read, sender.send, args.batch_size, args.parallel)
            held = _http.held(client, RIDE_OUT_SECONDS, args.gallery)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the service at {url}: {exc}") from None
    finally:
        images.close()
    dups = f", {len(sender.left_out)} left out as look-alikes" if args.skip_duplicates is not None else ""
    print(f"uploaded {uploaded} images ({len(rejected)} rejected by the service{dups}); it holds {held}")
    # 1: the service took not one image of SOURCE, as `index build` (a re-run with only the refused files
    # left to send, the others in the service already, reports them again and has nothing new to do: 0)
    return 1 if rejected and not uploaded and not (have & set(ids)) else 0


def _check_upload_options(args) -> None:
    """The refusals of options out of their range, before anything is read or sent."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.parallel < 1:
        raise CliError(f"--parallel must be at least 1, got {args.parallel}")
    if args.skip_duplicates is not None and not 0 < args.skip_duplicates <= 1:
        raise CliError(f"--skip-duplicates is a cosine similarity in (0, 1], got {args.skip_duplicates}")


def _register_heif() -> None:
    """HEIC sizes for the metadata; without pillow-heif they go without, and the service decides about them."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass


RIDE_OUT_SECONDS = 60.0   # how long a lost service is waited for mid-upload (a restart loads its model)


class _Sender:
    """Sends batches to the service (POST /index) from worker threads: each batch whole; halved, down to one
    file, when the service answers 413 (a body, a number of parts or a number of pixels over its limits), so
    that many small files under a tight limit still go a few to a request; one file at a time when it refuses
    one of them otherwise (400, 415, 422), to learn which. Remembers the look-alikes it left out."""

    def __init__(self, client, url: str, labels: dict[str, str | None], extra: dict[str, dict], dedupe: dict,
                 exif: bool, gps: bool, gallery: str = "default"):
        self.client, self.url, self.labels, self.extra = client, url, labels, extra
        self.dedupe, self.exif, self.gps, self.gallery = dedupe, exif, gps, gallery
        self.left_out: list[str] = []   # ids the service left out as look-alikes
        self._warned: list[bool] = []   # whether the service was said not to know skip_duplicates

    def send(self, files: list[tuple[str, bytes]]) -> tuple[int, list[str]]:
        """Upload one batch: (how many were stored, the ids refused). In a worker thread."""
        status, message, answer = self._post(files)
        if status == 201:
            return self._stored_of(answer), []
        if status not in (400, 413, 415, 422):
            raise CliError(_http.fatal(status, message, self.url))
        if len(files) == 1:   # refused alone: said with the service's reason (a 413 names its limit)
            _write(f"rejected {files[0][0]}: {status} {message}")
            return 0, [files[0][0]]
        if status == 413:   # too large as a whole: each half may fit (a file too large alone is found in a few)
            return self._halves(files)
        stored, refused = 0, []  # one of them is refused: learn which, keep the rest
        for one in files:
            n, no = self.send([one])
            stored += n
            refused.extend(no)
        return stored, refused

    def _halves(self, files: list[tuple[str, bytes]]) -> tuple[int, list[str]]:
        """`send` of each half of a batch of two files or more, in order."""
        middle = (len(files) + 1) // 2
        first, second = self.send(files[:middle]), self.send(files[middle:])
        return first[0] + second[0], first[1] + second[1]

    def _post(self, files: list[tuple[str, bytes]]) -> tuple[int, str, dict]:
        return _post(self.client, files, self.labels, self.extra, self.dedupe, self.exif, self.gps,
                     self._lost)

    def _lost(self, exc: Exception, seconds: float) -> None:
        _write(f"lost the service at {self.url} ({type(exc).__name__}: {exc}); trying again for up to "
               f"{seconds:.0f} s (a restart; what it acknowledged is kept, and the batch is sent again)")

    def _stored_of(self, answer: dict) -> int:
        """How many of a batch the service stored, saying which it left out as look-alikes, and when its write
        made the gallery (a misspelt --gallery shows)."""
        made = g.made_gallery_line(answer, self.gallery)
        if made is not None:
            _write(made)
        if self.dedupe and "skipped" not in answer and not self._warned:
            self._warned.append(True)
            _write(f"warning: the service at {self.url} does not know skip_duplicates (an older simsearch): "
                   "it stores copies too")
        for s in answer.get("skipped", []):
            _write(f"left out {s['id']}: a look-alike of {s['duplicate_of']} ({s['score']:.4f})")
        self.left_out.extend(s["id"] for s in answer.get("skipped", []))
        return answer["count"]


def _write(line: str) -> None:
    """A line on the console above the progress bar."""
    from tqdm import tqdm

    tqdm.write(line)


def _send_all(todo: list[str], read: Callable[[str], bytes], send: Callable[[list[tuple[str, bytes]]],
              tuple[int, list[str]]], batch_size: int, parallel: int) -> tuple[int, list[str]]:
    """Every id of `todo` sent in batches, with a progress bar: (how many the service stored, the ids it refused)."""
    from tqdm import tqdm

    uploaded, rejected = 0, []
    # Batches are read here (a tar in order) and sent by `parallel` threads, so the service
    # embeds one batch while the next is on its way; at most 2 x parallel batches are read ahead.
    with tqdm(total=len(todo), unit="img", desc="uploading") as bar, ThreadPoolExecutor(parallel) as pool:
        pending: deque = deque()

        def finish() -> None:
            nonlocal uploaded
            future, n = pending.popleft()
            stored, refused = future.result()
            uploaded += stored
            rejected.extend(refused)
            bar.update(n)

        for start in range(0, len(todo), batch_size):
            files = [(i, read(i)) for i in todo[start:start + batch_size]]
            pending.append((pool.submit(send, files), len(files)))
            if len(pending) >= 2 * parallel:
                finish()
        while pending:
            finish()
    return uploaded, rejected


def _ids_in_service(client) -> set[str]:
    """Every id the service holds (GET /index, page by page): what an earlier run uploaded."""
    have: set[str] = set()
    offset = 0
    while offset is not None:
        r = _http.request(client, "GET", "/index", params={"offset": offset, "limit": PAGE})
        if r.status_code == 404 and not have:   # a named gallery not made yet: the first upload makes it
            return have
        if r.status_code != 200:
            raise CliError(_http.fatal(r.status_code, _http.error_message(r), str(client.base_url)))
        body = r.json()
        have.update(item["id"] for item in body["items"])
        offset = body["next_offset"]
    return have


def _post(client, files: list[tuple[str, bytes]], labels: dict[str, str | None], extra: dict[str, dict],
          params: dict, exif: bool = False, gps: bool = False, lost=None) -> tuple[int, str, dict]:
    """POST /index of these (id, bytes), with their labels and metadata as `index build` records it ({width,
    height}, with `exif` and `gps` the photo's, and the --metadata file's keys); (status, the service's
    message, its answer when it stored them)."""
    data = {"id": [i for i, _ in files],
            "metadata": [json.dumps({**_described(b, exif, gps), **extra.get(i, {})}) for i, b in files]}
    if any(labels[i] is not None for i, _ in files):
        data["label"] = [labels[i] or "" for i, _ in files]
    # Once sending, a lost connection is waited out for RIDE_OUT_SECONDS (a service restarting: a batch sent again
    # is stored once, by its ids); the first contact fails at once (a wrong --url)
    r = _http.request(client, "POST", "/index", reconnect_seconds=RIDE_OUT_SECONDS, on_reconnect=lost,
                      files=[("file", (Path(i).name, b)) for i, b in files], data=data,
                      params=params)   # httpx adds them to the client's ?gallery=
    return r.status_code, _http.error_message(r), (r.json() if r.status_code == 201 else {})


def _described(data: bytes, exif: bool, gps: bool = False) -> dict:
    """Width and height as displayed (after the EXIF orientation), and with `exif` when and with what the
    photo was taken, with `gps` where, as `index build` stores them, from the image's header (no decoding: a
    PNG's through _png_header); {} where Pillow cannot tell."""
    from PIL import Image

    import model

    from ._metadata_file import exif_metadata, gps_metadata

    try:
        with Image.open(io.BytesIO(data)) as opened, _png_header(opened, data) as im:
            width, height = model.displayed_size(im)
            return {"width": width, "height": height, **(exif_metadata(im) if exif else {}),
                    **(gps_metadata(im) if gps else {})}
    except Exception:  # noqa: BLE001  (the service gives the reason when it refuses the file)
        return {}


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ANIMATION = (b"acTL", b"fcTL", b"fdAT")


def _png_header(opened, data: bytes):
    """For a PNG (`opened` from `data`), its chunks without its pixels, opened: Pillow reads the chunks before a
    PNG's pixels as it opens it, and those after them (an eXIf, ImageMagick's "Raw profile type exif", XMP: where
    many tools write them) as it decodes it, so that PngImageFile.getexif() decodes every PNG without an eXIf
    before its pixels. `index build` decodes each image and reads them all; here Pillow's own code reads them all,
    the chunks after the pixels moved to where the pixels were, and nothing is decoded. `opened` itself (read as
    Pillow reads it, decoding where it must) for any other image, and for a PNG that is animated, has no IDAT or
    IDATs apart, has chunks that do not lie end to end up to its IEND or its end (cut short), or does not open so.
    """
    if opened.format != "PNG":
        return opened
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        cid, end = data[pos + 4:pos + 8], pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            return opened
        chunks.append((cid, data[pos:end]))
        pos = end
        if cid == b"IEND":
            break
    kinds = [cid for cid, _ in chunks]
    if (kinds[-1:] != [b"IEND"] and pos != len(data)) or b"IDAT" not in kinds \
            or any(k in kinds for k in _PNG_ANIMATION):
        return opened
    first, after = kinds.index(b"IDAT"), len(kinds) - kinds[::-1].index(b"IDAT")
    if any(k != b"IDAT" for k in kinds[first:after]):
        return opened
    try:
        return _header_png_class()(io.BytesIO(_PNG_SIGNATURE + b"".join(c for k, c in chunks if k != b"IDAT")))
    except Exception:  # noqa: BLE001  (as Pillow reads the chunks that follow the pixels, or fails to, in a decode)
        return opened


@functools.cache
def _header_png_class():   # made when first used: PIL is imported by the commands that read images
    from PIL import Image, PngImagePlugin

    class HeaderPng(PngImagePlugin.PngImageFile):
        """A PNG whose every chunk is read as it is opened (none follows the pixels: it has none), so that its
        EXIF is read without the load() PngImageFile.getexif does to read the chunks after the pixels."""

        def getexif(self) -> Image.Exif:
            return Image.Image.getexif(self)

    return HeaderPng
