"""Images to vectors for the routes: decoded (and thumbnailed) in threads, never on the event loop, and
embedded by the service's micro-batcher; images that are slow to decode go through a lane of their own."""
from __future__ import annotations

import time
from typing import Any, Callable

import anyio.to_thread
import numpy as np
from PIL import Image

from model import DRAFT_FORMATS, Crop, draft_size, make_thumbnail, open_image, thumbnail_draft

from ._batcher import SearchParams
from ._errors import ApiError
from ._images import PIXELS_SETTING, RLE_BMP_COST, SLOW_DECODE_PIXELS, decode_cost, decode_image, whole_decode_size
from ._service import Service


def _prepare(service: Service, files: list[tuple[str, bytes]], thumbnail_size: int,
             crop: Crop | None = None) -> tuple[np.ndarray, list]:
    # The model's input is made exactly as Embedder.embed makes it from a file (its own JPEG draft),
    # so an image indexed here, by `simsearch index build` or searched for gets the same vector.
    # With `crop` only that region of each image is embedded, and stored as its thumbnail.
    max_pixels, policy = service.settings.max_pixels, service.image_policy
    arrays, thumbs = [], []
    for what, data in files:
        t0 = time.perf_counter()
        array, whole = decode_image(data, max_pixels, what=what,
                                    convert=_model_input(service, crop, thumbnail_size, data), policy=policy)
        arrays.append(array)
        if thumbnail_size:
            try:
                thumbs.append(make_thumbnail(whole, thumbnail_size, crop))
            except Exception as exc:  # noqa: BLE001  (a decoded image the thumbnailer cannot handle)
                raise ApiError(400, "invalid_image", f"{what}: cannot make a thumbnail: {exc}") from None
        else:
            thumbs.append(None)
        # let go of it before the next image is decoded: a request's images are decoded one after the other, and
        # holding each until the next was decoded held two whole 64-MP decodes at once (PixelBudget counts one)
        del whole
        service.metrics.decode_seconds.observe(time.perf_counter() - t0)
    return np.stack(arrays), thumbs


def _model_input(service: Service, crop: Crop | None, thumbnail_size: int,
                 data: bytes) -> Callable[[Image.Image], tuple[np.ndarray, Image.Image | None]]:
    """decode_image's `convert` for the image `data`: (the model's input, the decoded image to make the
    thumbnail from, when there is to be one). An image decoded whole (PNG, WebP, GIF, BMP, AVIF) is decoded
    once for both, as nothing decodes it at a smaller scale: decoding it again for the thumbnail doubled the
    CPU of POST /index (h1 F5). A JPEG, MPO or HEIC is decoded for the model at its own draft scale (its
    vector must be a search's for the same file) and, from a second opening, at the thumbnail's, unless both
    drafts come out at the same scale and mode (model.thumbnail_draft: CIFAR's 32x32, a phone's 12 MP, both at
    1/8 with a 32-pixel model and 128-pixel thumbnails): then once. The thumbnail's decoding is done here, so
    that its failures are decode_image's."""
    def convert(img: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
        if not thumbnail_size:
            return service.embedder.preprocess(img, crop, owned=True), None
        if img.format not in DRAFT_FORMATS:
            img.load()   # the same pixels to_model_array would decode; it leaves the image as it is
            return service.embedder.preprocess(img, crop), img
        array = service.embedder.preprocess(img, crop, owned=True)   # drafted in place at the model's scale
        # opened as decode_image opened it (checked; damaged EXIF said once, as the same note in its collector)
        fresh = open_image(data, formats=service.image_policy.openers)
        thumb = thumbnail_draft(img, fresh, draft_size(thumbnail_size, crop))
        thumb.load()
        return array, thumb
    return convert


async def _embedded(service: Service, files: list[tuple[str, bytes]], crop: Crop | None,
                    params: SearchParams | None = None) -> tuple[np.ndarray, Any]:
    """The images' vectors, and with `params` the one image's hits, through the micro-batcher. Images that
    are slow to decode (a large PNG: nothing decodes it at a reduced scale) are decoded first in a thread of
    their own, one request at a time, so that the batches of everyone else's queries never wait behind them."""
    def decode() -> np.ndarray:
        return _prepare(service, files, 0, crop)[0]

    sizes = _check_whole_decode_budget(service, files, crop=crop)
    if any(size > SLOW_DECODE_PIXELS for size in sizes):
        if service.slow_decodes_waiting >= SLOW_DECODE_QUEUE:
            # a queue past this holds request slots for nothing but to wait: everyone else would get 503s
            service.metrics.rejected.labels("slow_decode_queue").inc()
            raise ApiError(503, "overloaded", f"{service.slow_decodes_waiting} requests with large images that "
                           "decode whole (PNG, WebP, GIF, BMP, AVIF, progressive JPEG) are already waiting to be "
                           "decoded, one at a time; retry shortly, or send a smaller image or a baseline JPEG",
                           {"Retry-After": "2"})
        service.metrics.slow_decodes.inc()
        service.slow_decodes_waiting += 1
        try:
            arrays = await anyio.to_thread.run_sync(decode, limiter=service.slow_decode_limiter)
        finally:
            service.slow_decodes_waiting -= 1
        return await service.batcher.submit(arrays, params)
    return await service.batcher.submit_encoded(decode, len(files), params)


SLOW_DECODE_QUEUE = 8   # requests decoding large whole-decoded images, the one at work included (~0.7 s each at most)


def _check_whole_decode_budget(service: Service, files: list[tuple[str, bytes]], write: bool = False,
                               crop: Crop | None = None) -> list[int]:
    """Before any image of a request is decoded: 413 when the images hold more pixels decoded at once in all than a
    search may (SIMSEARCH_MAX_PIXELS, what one image may) or, with `write`, a POST /index (SIMSEARCH_MAX_INDEX_PIXELS,
    never less), or when one image is over SIMSEARCH_MAX_PIXELS. 64 such images of 64 MP in a 165 KB search held the
    slow lane 43 s; 60 PNGs of 49 MP in a 9 MB POST /index took 110 s of CPU (h1 F5). Counted at what their decoding
    holds at once (whole_decode_size): a PNG, WebP, GIF, BMP or AVIF, and a progressive JPEG, at their size; another
    JPEG, or a HEIC, at the size of its draft for the model (and with `write` for the thumbnail), with the region
    `crop`; 64 HEICs of 64 MP without thumbnails, 28 KB each, had taken 40 s and 695 MB in one /batch/search (s53 H
    F3). An RLE-compressed BMP counts RLE_BMP_COST times its pixels (Pillow decodes it in Python). Returns each
    image's pixels so counted."""
    settings, policy = service.settings, service.image_policy
    budget, setting = ((max(settings.max_index_pixels, settings.max_pixels), "SIMSEARCH_MAX_INDEX_PIXELS") if write
                       else (settings.max_pixels, "SIMSEARCH_MAX_PIXELS"))
    model_size = service.embedder.meta.image_size if service.embedder is not None else 0
    need = draft_size(max(model_size, settings.thumbnail_size if write else 0), crop)
    sizes, rle = [], 0
    for what, data in files:
        width, height = whole_decode_size(data, policy, need)
        if width * height > settings.max_pixels:
            # as decode_image says it, but before the images ahead of it are decoded
            raise ApiError(413, "image_too_large", f"{what} is {width}x{height} = {width * height} pixels; the "
                                                   f"limit is {settings.max_pixels} ({PIXELS_SETTING})")
        cost = decode_cost(data, policy)
        rle += cost > 1
        sizes.append(width * height * cost)
    total = sum(sizes)
    if total > budget:
        raise ApiError(413, "image_too_large", f"the {len(files)} images of this request hold {total:,} pixels "
                       f"decoded at once (images in formats decoded whole: PNG, WebP, GIF, BMP, AVIF, progressive "
                       f"JPEG; other JPEGs and HEICs at their reduced scale)"
                       + (f", an RLE-compressed BMP's counted {RLE_BMP_COST} times (Pillow decodes it a pixel at a "
                          "time)" if rle else "")
                       + f", more than the {budget:,} one request may ({setting}); send fewer or smaller images, or "
                       "baseline JPEGs (decoded at the model's scale)")
    return sizes
