"""A tiny FastAPI app for bench_http_floor.py: what the HTTP stack itself costs per request, layer by
layer, under the same uvicorn as the service (not part of the service; never imported by it).

    GET  /healthz            {"status": "ok"}
    POST /form               parse the multipart body, read the `file` part, answer its length
    POST /form_thread        the same plus one anyio.to_thread.run_sync hop (a no-op in a worker thread)
    POST /form_two_hops      the same plus a second hop through a one-thread executor (like the batcher)
    POST /form_decode        /form_two_hops with the first hop decoding the image with Pillow and
                             model.to_model_array (32x32), the second a no-op: everything but model and index
    POST /raw                read the body (the image itself, no multipart), answer its length
    POST /raw_pipeline       /raw plus one hop that decodes, embeds (batch 1) and searches a flat FAISS
                             index: the least a search endpoint can do, with none of the service's
                             validation, batching, metrics or middleware. Only when FLOOR_ARTIFACT names
                             an artifact (FLOOR_GALLERY random unit vectors, default 10,000)
"""
from __future__ import annotations

import asyncio
import io
import os
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
from fastapi import FastAPI, Request

_executor = ThreadPoolExecutor(max_workers=1)


def create_app() -> FastAPI:
    app = FastAPI()

    async def _file(request: Request) -> bytes:
        form = await request.form()
        try:
            return await form["file"].read()
        finally:
            await form.close()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/form")
    async def form(request: Request):
        return {"bytes": len(await _file(request))}

    @app.post("/form_thread")
    async def form_thread(request: Request):
        data = await _file(request)
        n = await anyio.to_thread.run_sync(len, data)
        return {"bytes": n}

    @app.post("/form_two_hops")
    async def form_two_hops(request: Request):
        data = await _file(request)
        n = await anyio.to_thread.run_sync(len, data)
        await asyncio.get_running_loop().run_in_executor(_executor, len, data)
        return {"bytes": n}

    @app.post("/form_decode")
    async def form_decode(request: Request):
        data = await _file(request)

        def decode():
            from PIL import Image

            import model

            img = Image.open(io.BytesIO(data))
            img.load()
            return model.to_model_array(img, 3, 32)

        arr = await anyio.to_thread.run_sync(decode)
        await asyncio.get_running_loop().run_in_executor(_executor, len, arr)
        return {"shape": list(arr.shape)}

    @app.post("/raw")
    async def raw(request: Request):
        return {"bytes": len(await request.body())}

    if os.environ.get("FLOOR_ARTIFACT"):
        search_one = _pipeline(os.environ["FLOOR_ARTIFACT"], int(os.environ.get("FLOOR_GALLERY", "10000")))

        @app.post("/raw_pipeline")
        async def raw_pipeline(request: Request):
            data = await request.body()
            return await asyncio.get_running_loop().run_in_executor(_executor, search_one, data)

    return app


def _pipeline(artifact: str, gallery: int):
    """decode -> embed -> flat search of `gallery` random unit vectors, for one image's bytes."""
    from PIL import Image

    import _common  # bench/, the app's working directory
    import model

    embedder = model.Embedder.from_file(artifact, device="cpu")
    index = _common.random_flat_index(gallery, embedder.dim)

    def search_one(data: bytes) -> dict:
        arr = embedder.preprocess(Image.open(io.BytesIO(data)))  # JPEG draft decoding included
        scores, ids = index.search(embedder.embed_arrays(arr[None]), 10)
        return {"ids": ids[0].tolist(), "scores": scores[0].tolist()}

    return search_one
