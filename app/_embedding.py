"""Images to vectors for the routes: decoded (and thumbnailed) in threads, never on the event loop, and
embedded by the service's micro-batcher; images that are slow to decode go through a lane of their own."""
from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
import numpy as np

from model import Crop, draft_size, make_thumbnail

from ._batcher import SearchParams
from ._errors import ApiError
from ._images import decode_image, slow_to_decode, whole_decode_pixels
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
        arrays.append(decode_image(data, max_pixels, what=what,
                                   convert=lambda im: service.embedder.preprocess(im, crop, owned=True),
                                   policy=policy))
        if thumbnail_size:
            img = decode_image(data, max_pixels, draft=draft_size(thumbnail_size, crop), what=what, policy=policy)
            try:
                thumbs.append(make_thumbnail(img, thumbnail_size, crop))
            except Exception as exc:  # noqa: BLE001  (a decoded image the thumbnailer cannot handle)
                raise ApiError(400, "invalid_image", f"{what}: cannot make a thumbnail: {exc}") from None
        else:
            thumbs.append(None)
        service.metrics.decode_seconds.observe(time.perf_counter() - t0)
    return np.stack(arrays), thumbs


async def _embedded(service: Service, files: list[tuple[str, bytes]], crop: Crop | None,
                    params: SearchParams | None = None) -> tuple[np.ndarray, Any]:
    """The images' vectors, and with `params` the one image's hits, through the micro-batcher. Images that
    are slow to decode (a large PNG: nothing decodes it at a reduced scale) are decoded first in a thread of
    their own, one request at a time, so that the batches of everyone else's queries never wait behind them."""
    def decode() -> np.ndarray:
        return _prepare(service, files, 0, crop)[0]

    policy = service.image_policy
    if any(slow_to_decode(data, policy) for _, data in files):
        _check_whole_decode_budget(service, files)
        if service.slow_decodes_waiting >= SLOW_DECODE_QUEUE:
            # a queue past this holds request slots for nothing but to wait: everyone else would get 503s
            service.metrics.rejected.labels("slow_decode_queue").inc()
            raise ApiError(503, "overloaded", f"{service.slow_decodes_waiting} requests with large images that "
                           "decode whole (PNG, WebP, GIF, BMP, AVIF) are already waiting to be decoded, one at a "
                           "time; retry shortly, or send a smaller image or a JPEG", {"Retry-After": "2"})
        service.metrics.slow_decodes.inc()
        service.slow_decodes_waiting += 1
        try:
            arrays = await anyio.to_thread.run_sync(decode, limiter=service.slow_decode_limiter)
        finally:
            service.slow_decodes_waiting -= 1
        return await service.batcher.submit(arrays, params)
    return await service.batcher.submit_encoded(decode, len(files), params)


SLOW_DECODE_QUEUE = 8   # requests decoding large whole-decoded images, the one at work included (~0.7 s each at most)


def _check_whole_decode_budget(service: Service, files: list[tuple[str, bytes]]) -> None:
    """413 when the images of one request that decode whole hold more pixels in all than one image may
    (SIMSEARCH_MAX_PIXELS): 64 such images of 64 MP in a 165 KB request held the slow lane 43 s."""
    budget = service.settings.max_pixels
    sizes = [whole_decode_pixels(data, service.image_policy) for _, data in files]
    if any(size > budget for size in sizes):
        return   # one image over the limit: decode_image refuses it, naming it
    total = sum(sizes)
    if total > budget:
        raise ApiError(413, "image_too_large", f"the {len(files)} images of this request hold {total:,} pixels in "
                       f"formats decoded whole (PNG, WebP, GIF, BMP, AVIF), more than the {budget:,} one request "
                       "may (SIMSEARCH_MAX_PIXELS); send fewer or smaller images, or JPEGs (decoded at the "
                       "model's scale)")
