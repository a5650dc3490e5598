"""A tiny FastAPI app for bench_http_floor.py: what the HTTP stack itself costs per request, layer by
layer, under the same uvicorn as the service (not part of the service; never imported by it).

    GET  /healthz            {"status": "ok"}
    POST /form               parse the multipart body, read the `file` part, answer its length
    POST /form_thread        the same plus one anyio.to_thread.run_sync hop (a no-op in a worker thread)
    POST /form_two_hops      the same plus a second hop through a one-thread executor (like the batcher)
    POST /form_decode        /form_two_hops with the first hop decoding the image with Pillow and
                             model.to_model_array (32x32), the second a no-op: everything but model and index
"""
from __future__ import annotations

import asyncio
import io
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

    return app
