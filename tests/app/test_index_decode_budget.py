"""POST /index has a whole-decode pixel budget of its own, as the searches have theirs, checked before any image
is decoded, and decodes an image that decodes whole once for both its vector and its thumbnail (h1 F5: 60 PNGs of
49 MP in one 9 MB POST /index took 110 s of server CPU). Over real HTTP, against `simsearch serve`."""
from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from .conftest import encode, pattern, running, start_server, stop_server
from .test_api import assert_error, upload

KEY = "budget-key"
MAX_PIXELS, MAX_INDEX_PIXELS = 1_000_000, 3_000_000


def solid_png(side: int, colour=(90, 140, 30)) -> bytes:
    return encode(Image.new("RGB", (side, side), colour), "PNG")   # a few KB for a megapixel


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A real server: images of 1 MP at most, a search's whole-decoded images 1 MP in all, a POST /index's 3 MP."""
    work = tmp_path_factory.mktemp("budget")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0",
                           "SIMSEARCH_MAX_PIXELS": str(MAX_PIXELS),
                           "SIMSEARCH_MAX_INDEX_PIXELS": str(MAX_INDEX_PIXELS)}, work)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=120) as client:
        yield client
    stop_server(server)


def decodes(client: httpx.Client) -> float:
    """How many images the server has decoded (simsearch_decode_seconds_count)."""
    text = client.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("simsearch_decode_seconds_count"))


def test_a_post_index_over_its_pixel_budget_is_413_before_decoding_and_stores_nothing(live):
    big = solid_png(1000)   # 1 MP: one image may be this large
    before = decodes(live)
    err = assert_error(live.post("/index?gallery=over", files=[upload(big, f"p{i}.png") for i in range(4)]),
                       413, "image_too_large", "the 4 images of this request hold 4,000,000 pixels",
                       "more than the 3,000,000 one request may (SIMSEARCH_MAX_INDEX_PIXELS)")
    assert "JPEG" in err["message"]
    assert decodes(live) == before   # refused from the headers: not one of them decoded
    assert "over" not in [g["name"] for g in live.get("/galleries").json()["galleries"]]   # no gallery made
    assert live.get("/index", params={"gallery": "over"}).status_code == 404
    # the service keeps serving: a search, and a write under the budget
    assert live.post("/search?k=1", files=[upload(solid_png(64))]).status_code == 200
    r = live.post("/index?gallery=over", files=[upload(big, f"p{i}.png") for i in range(3)])
    assert r.status_code == 201 and r.json()["count"] == 3, r.text


def test_a_write_may_hold_more_whole_decoded_pixels_than_a_search(live):
    two = [upload(solid_png(800, (i, 9, 9)), f"q{i}.png") for i in range(2)]   # 1.28 MP in all
    assert_error(live.post("/search?k=1", files=two), 413, "image_too_large", "1,280,000 pixels",
                 "more than the 1,000,000 one request may (SIMSEARCH_MAX_PIXELS)")
    r = live.post("/index?gallery=write", files=two)
    assert r.status_code == 201 and r.json()["count"] == 2, r.text


def test_many_small_pngs_are_bounded_in_a_search_too(live):
    # each under the size that sends an image to the slow lane, so before, none of them was counted
    small = [upload(solid_png(600, (i, 1, 2)), f"s{i}.png") for i in range(3)]   # 3 x 360,000
    before = decodes(live)
    assert_error(live.post("/embed", files=small), 413, "image_too_large", "1,080,000 pixels")
    assert decodes(live) == before
    assert live.post("/embed", files=small[:2]).status_code == 200


@pytest.mark.parametrize("path", ["/index?gallery=lone", "/search?k=1"])
def test_one_image_over_the_limit_is_refused_before_the_images_ahead_of_it_are_decoded(live, path):
    ahead = [upload(solid_png(500, (i, 3, 4)), f"a{i}.png") for i in range(2)]
    before = decodes(live)
    assert_error(live.post(path, files=[*ahead, upload(solid_png(1001), "huge.png")]), 413, "image_too_large",
                 "file 2 ('huge.png') is 1001x1001 = 1002001 pixels; the limit is 1000000 (SIMSEARCH_MAX_PIXELS, or "
                 "`simsearch serve --max-pixels`)")
    assert decodes(live) == before


def test_the_write_budget_is_never_less_than_what_one_image_may_hold(hybrid1_artifact, tmp_path):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "d"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_PIXELS": str(MAX_PIXELS),
                           "SIMSEARCH_MAX_INDEX_PIXELS": "1000"}, tmp_path)
    try:
        r = httpx.post(server.url + "/index", files=[upload(solid_png(1000))], timeout=120)
        assert r.status_code == 201, r.text
        assert_error(httpx.post(server.url + "/index", files=[upload(solid_png(1000))] * 2, timeout=120), 413,
                     "image_too_large", "more than the 1,000,000 one request may")
    finally:
        stop_server(server)


def old_thumbnail(data: bytes, size: int = 128) -> bytes:
    """The thumbnail as POST /index made it before: from a second decoding at the thumbnail's draft scale."""
    from model import draft_size, make_thumbnail

    from app._images import decode_image

    return make_thumbnail(decode_image(data, 10**9, draft=draft_size(size, None)), size)


def photo_turned_with_exif() -> bytes:
    img = pattern(11, (640, 480))
    exif = img.getexif()
    exif[0x0112] = 6   # stored on its side
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def test_thumbnails_and_vectors_are_those_of_before(live):
    transparent = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (50, 50, 150, 150))
    images = {"rgba.png": encode(transparent, "PNG"), "pattern.png": encode(pattern(3, (900, 700)), "PNG"),
              "turned.jpg": photo_turned_with_exif(), "anim.gif": encode(pattern(4, (200, 150)), "GIF"),
              "photo.webp": encode(pattern(5, (640, 480)), "WEBP")}
    files = [upload(data, name) for name, data in images.items()]
    r = live.post("/index?gallery=thumbs", data={"id": list(images)}, files=files)
    assert r.status_code == 201, r.text
    for name, data in images.items():
        thumb = live.get(f"/index/{name}/thumbnail", params={"gallery": "thumbs"})
        assert thumb.status_code == 200 and thumb.content == old_thumbnail(data), name
        # the vector stored is the one a search for the same file gets
        hit = live.post("/search?k=1&gallery=thumbs", files=[upload(data, name)]).json()["results"][0]
        assert hit["id"] == name and hit["score"] > 0.9999, (name, hit)
    assert Image.open(io.BytesIO(live.get("/index/turned.jpg/thumbnail", params={"gallery": "thumbs"}).content)
                      ).size == (96, 128)   # upright


@pytest.mark.anyio
async def test_an_image_decoded_whole_is_decoded_once_for_its_vector_and_thumbnail(make_settings, monkeypatch):
    """Counted at Image.open (a PNG's size is read from its header without it): one opening for a PNG, where a
    second decoding for the thumbnail doubled the CPU of POST /index; a JPEG is still decoded at two draft
    scales, the model's own (its vector must be a search's for the same file) and the thumbnail's."""
    opened = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        opened.append(1)
        return real_open(*args, **kwargs)

    async with running(make_settings()) as c:
        monkeypatch.setattr(Image, "open", counting_open)
        r = await c.post("/index", files=[upload(encode(pattern(1, (300, 200)), "PNG"))])
        assert r.status_code == 201 and len(opened) == 1, (r.text, len(opened))
        opened.clear()
        r = await c.post("/index", files=[upload(encode(pattern(2, (300, 200)), "JPEG"), "p.jpg", "image/jpeg")])
        assert r.status_code == 201 and len(opened) == 2, (r.text, len(opened))
