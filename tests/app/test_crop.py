"""`crop=left,top,right,bottom`: the routes that take images embed only that region of each one (and
POST /index keeps it as the thumbnail), with the bundled CIFAR-10 model and real CIFAR-10 images; a
wrong region is a 422 that names it, and the service keeps serving."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


from ..photo_formats import made_up_photo
from .conftest import encode, running
from .test_api import assert_error, still_serving, upload

pytestmark = pytest.mark.anyio

SCENE = (640, 480)
BOX = (40, 260, 200, 420)   # where the object sits in the scene: 160x160, bottom left
CROP = "0.0625,0.541667,0.3125,0.875"   # BOX as fractions of 640x480 (rounded outward to the same pixels)


def _scene(background: bytes, obj: bytes) -> Image.Image:
    """A 640x480 'photo': one CIFAR-10 image filling the frame, another pasted small into a corner."""
    return made_up_photo(background, obj, BOX, SCENE)



async def _gallery(c, cifar) -> None:
    files = [upload(d, f"{label}-{i}.jpg", "image/jpeg") for label, imgs in cifar.items() for i, d in enumerate(imgs)]
    ids = [f"{label}-{i}" for label, imgs in cifar.items() for i in range(len(imgs))]
    labels = [label for label, imgs in cifar.items() for _ in imgs]
    r = await c.post("/index", files=files, data={"id": ids, "label": labels})
    assert r.status_code == 201, r.text


async def test_searching_a_region_finds_the_object_there_where_the_whole_photo_finds_the_background(trained, cifar):
    # a car fills the frame; a small airplane sits in the corner
    scene = encode(_scene(cifar["automobile"][0], cifar["airplane"][0]), "JPEG", quality=92)
    async with running(trained()) as c:
        await _gallery(c, cifar)
        whole = (await c.post("/search?k=1", files=[upload(scene, "photo.jpg", "image/jpeg")])).json()["results"]
        region = await c.post(f"/search?k=3&crop={CROP}", files=[upload(scene, "photo.jpg", "image/jpeg")])
        assert region.status_code == 200, region.text
        hits = region.json()["results"]
        assert whole[0]["id"] == "automobile-0"
        assert hits[0]["id"] == "airplane-0" and hits[0]["score"] > 0.9, hits
        voted = (await c.post(f"/classify?k=3&crop={CROP}", files=[upload(scene, "photo.jpg", "image/jpeg")])).json()
        assert voted["label"] == "airplane"
        # the image as the body takes a region too
        body = await c.post(f"/search?k=1&crop={CROP}", content=scene, headers={"Content-Type": "image/jpeg"})
        assert body.json()["results"] == hits[:1]


async def test_a_region_gets_the_vector_of_that_region_cut_out_and_sent_alone(trained, cifar):
    scene = _scene(cifar["automobile"][1], cifar["airplane"][1])
    png = encode(scene, "PNG")   # lossless: the region's pixels are the cut-out's exactly
    async with running(trained()) as c:
        cut = (await c.post("/embed", files=[upload(encode(scene.crop(BOX), "PNG"))])).json()["vectors"][0]
        region = (await c.post(f"/embed?crop={CROP}", files=[upload(png)])).json()["vectors"][0]
        whole = (await c.post("/embed", files=[upload(png)])).json()["vectors"][0]
        assert np.abs(np.array(region) - cut).max() < 1e-6
        assert float(np.dot(whole, cut)) < 0.9
        # /batch/search applies it to every image, with each query's answer what /search gives
        await _gallery(c, cifar)
        other = encode(_scene(cifar["airplane"][2], cifar["automobile"][2]), "PNG")
        batch = await c.post(f"/batch/search?k=2&crop={CROP}", files=[upload(png, "a.png"), upload(other, "b.png")])
        assert batch.status_code == 200, batch.text
        for q, data in zip(batch.json()["queries"], (png, other)):
            one = (await c.post(f"/search?k=2&crop={CROP}", files=[upload(data)])).json()["results"]
            assert [h["id"] for h in q["results"]] == [h["id"] for h in one]   # scores: to float rounding
            assert [h["score"] for h in q["results"]] == pytest.approx([h["score"] for h in one], abs=1e-5)
        assert batch.json()["queries"][1]["results"][0]["id"] == "automobile-2"


async def test_indexing_a_region_stores_its_vector_and_a_thumbnail_of_it(trained, cifar):
    scene = _scene(cifar["automobile"][3], cifar["airplane"][3])
    async with running(trained()) as c:
        r = await c.post(f"/index?crop={CROP}", files=[upload(encode(scene, "PNG"))], data={"id": "plane-in-photo"})
        assert r.status_code == 201, r.text
        thumb = Image.open(io.BytesIO((await c.get("/index/plane-in-photo/thumbnail")).content))
        assert thumb.size == (128, 128)   # the 160x160 region, not the 640x480 photo
        expected = np.asarray(scene.crop(BOX).resize((128, 128), Image.Resampling.LANCZOS), np.float32)
        assert np.abs(np.asarray(thumb.convert("RGB"), np.float32) - expected).mean() < 6
        hit = (await c.post("/search?k=1", files=[upload(encode(scene.crop(BOX), "PNG"))])).json()["results"][0]
        assert hit["id"] == "plane-in-photo" and hit["score"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("crop, words", [
    ("0.1,0.2,0.3", ["crop='0.1,0.2,0.3'", "has 3 numbers"]),
    ("0.5,0,0.2,1", ["crop 0.5,0,0.2,1", "left must be less than right"]),
    ("0,0,1,2", ["between 0 and 1"]),
    ("left,top,right,bottom", ["must be four numbers"]),
])
async def test_a_wrong_region_is_a_422_that_names_it_and_the_service_keeps_serving(make_settings, jpeg, crop, words):
    async with running(make_settings()) as c:
        for path in ("/search", "/classify", "/batch/search", "/embed", "/index"):
            r = await c.post(path, params={"crop": crop}, files=[upload(jpeg, "q.jpg", "image/jpeg")])
            assert_error(r, 422, "invalid_parameter", *words)
        assert (await c.get("/index")).json()["count"] == 0   # nothing was stored by the refused /index
        await still_serving(c)


async def test_a_region_of_a_vector_query_is_refused(make_settings):
    async with running(make_settings()) as c:
        dim = (await c.get("/index")).json()["dimension"]
        r = await c.post("/search?crop=0,0,0.5,0.5", json={"vector": [1.0] + [0.0] * (dim - 1)})
        assert_error(r, 422, "invalid_parameter", "crop", "vector")
        r = await c.post("/batch/search?crop=0,0,0.5,0.5", json={"vectors": [[1.0] + [0.0] * (dim - 1)]})
        assert_error(r, 422, "invalid_parameter", "crop", "vector")
