"""Uploads whose decoding costs far more than their size says (session 53, helper H's hunt), over real HTTP against
`simsearch serve`: a progressive JPEG of thousands of scans (each a pass of libjpeg over the whole image: a 325 KB
file took 86 s of CPU and blocked every other search) is refused before it is decoded; a progressive JPEG (whose
coefficients libjpeg holds whole, whatever its draft), a JPEG whose `crop` forbids a reduced-size decode, and a
HEIC without a thumbnail large enough count at their full size in the request's pixel budget and the slow lane."""
from __future__ import annotations

import struct
import time

import httpx
import pytest

from .conftest import encode, pattern, start_server, stop_server
from .test_api import assert_error, upload
from ..photo_formats import many_scan_jpeg

MAX_PIXELS = 5_000_000   # above the 4 MP past which an image goes through the slow lane (SLOW_DECODE_PIXELS)


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("bombs")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_PIXELS": str(MAX_PIXELS)}, work)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
    stop_server(server)


def slow_decodes(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("simsearch_slow_decode_requests_total")))


@pytest.mark.parametrize("path", ["/search?k=1", "/embed", "/batch/search?k=1", "/index?gallery=bombs"])
def test_a_jpeg_of_thousands_of_scans_is_refused_before_it_is_decoded(live, path):
    bomb = many_scan_jpeg(2000, 2000, 3000)   # 30 KB
    started = time.perf_counter()
    assert_error(live.post(path, files=[upload(bomb, "scans.jpg", "image/jpeg")]), 413, "image_too_large",
                 "('scans.jpg')", "more than 100 scans")
    assert time.perf_counter() - started < 5
    # the service keeps serving, and a progressive JPEG as encoders write it (10 scans) is taken
    photo = encode(pattern(3, (640, 480)), "JPEG", progressive=True, quality=85)
    assert live.post(path, files=[upload(photo, "photo.jpg", "image/jpeg")]).status_code in (200, 201)
    assert live.post(path, files=[upload(many_scan_jpeg(640, 480, 90), "ok.jpg", "image/jpeg")]).status_code in (
        200, 201)   # 91 scans: under the limit


def test_progressive_jpegs_count_at_their_full_size(live):
    # 2 x 2.56 MP: as baseline JPEGs (decoded at 1/8) they fit, as progressive ones they hold 5.12 MP whole
    pair = [pattern(i, (1600, 1600)) for i in (1, 2)]
    baseline = [upload(encode(p, "JPEG", quality=80), f"b{i}.jpg", "image/jpeg") for i, p in enumerate(pair)]
    progressive = [upload(encode(p, "JPEG", quality=80, progressive=True), f"p{i}.jpg", "image/jpeg")
                   for i, p in enumerate(pair)]
    assert live.post("/embed", files=baseline).status_code == 200
    assert_error(live.post("/embed", files=progressive), 413, "image_too_large", "5,120,000 pixels",
                 "progressive JPEG")
    assert live.post("/embed", files=progressive[:1]).status_code == 200
    # one over the slow lane's 4 MP goes through it, one at a time, as a large PNG does
    before = slow_decodes(live)
    big = pattern(4, (2100, 2000))
    assert live.post("/search?k=1", files=[upload(encode(big, "JPEG"), "b.jpg", "image/jpeg")]).status_code == 200
    assert slow_decodes(live) == before
    r = live.post("/search?k=1", files=[upload(encode(big, "JPEG", progressive=True), "p.jpg", "image/jpeg")])
    assert r.status_code == 200 and slow_decodes(live) == before + 1


def test_a_crop_that_forbids_a_reduced_jpeg_decode_counts_the_full_size(live):
    photo = upload(encode(pattern(5, (2100, 2000)), "JPEG", quality=80), "photo.jpg", "image/jpeg")
    before = slow_decodes(live)
    assert live.post("/search?k=1&crop=0,0,0.5,0.5", files=[photo]).status_code == 200   # drafted at 1/8
    assert slow_decodes(live) == before
    assert live.post("/search?k=1&crop=0,0,0.001,0.001", files=[photo]).status_code == 200   # decoded whole
    assert slow_decodes(live) == before + 1
    assert_error(live.post("/embed?crop=0,0,0.001,0.001", files=[photo, photo]), 413, "image_too_large",
                 "8,400,000 pixels")


def test_a_crop_that_forbids_a_reduced_jpeg_decode_counts_the_full_size_on_index_too(hybrid1_artifact, tmp_path):
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "d"),
                           "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_PIXELS": str(MAX_PIXELS),
                           "SIMSEARCH_MAX_INDEX_PIXELS": str(MAX_PIXELS)}, tmp_path)
    try:
        photos = [upload(encode(pattern(5, (2100, 2000)), "JPEG", quality=80), f"p{i}.jpg", "image/jpeg")
                  for i in range(2)]
        with httpx.Client(base_url=server.url, timeout=120) as c:
            assert c.post("/index?crop=0,0,0.5,0.5", files=photos).status_code == 201   # drafted at 1/8
            assert_error(c.post("/index?crop=0,0,0.001,0.001", files=photos), 413, "image_too_large",
                         "8,400,000 pixels")   # decoded whole: 2 x 4.2 MP
    finally:
        stop_server(server)


def test_a_crop_narrower_than_any_float_is_taken(live):
    photo = upload(encode(pattern(6, (640, 480)), "JPEG"), "photo.jpg", "image/jpeg")
    for crop in ("0,0,5e-324,1", "0,0,1,5e-324", "0.5,0.5,0.5000000000000001,1"):
        r = live.post(f"/search?k=1&crop={crop}", files=[photo])
        assert r.status_code == 200, (crop, r.text)


@pytest.mark.skipif("not __import__('model').HEIF_READABLE", reason="this Pillow cannot read HEIC")
def test_a_heic_without_a_thumbnail_counts_at_its_full_size(live):
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = pattern(7, (1600, 1600))
    bare, thumbed = encode(img, "HEIF", quality=50), encode(img, "HEIF", quality=50, thumbnails=[256])
    assert live.post("/embed", files=[upload(thumbed, f"t{i}.heic", "image/heic") for i in range(2)]
                     ).status_code == 200   # from their 256-pixel thumbnails
    assert_error(live.post("/embed", files=[upload(bare, f"h{i}.heic", "image/heic") for i in range(2)]), 413,
                 "image_too_large", "5,120,000 pixels")
    assert live.post("/embed", files=[upload(bare, "h.heic", "image/heic")]).status_code == 200



def rle4_bmp(width: int, height: int) -> bytes:
    """An RLE4 BMP of runs of 255 pixels (helper H's craft_bmp_rle4.py): some 60 bytes a row of 8000 pixels."""
    row = b"\xff\x12" * (width // 255) + (bytes([width % 255, 0x12]) if width % 255 else b"") + b"\x00\x00"
    data = row * height + b"\x00\x01"
    palette = b"".join(bytes([i * 16, i * 16, i * 16, 0]) for i in range(16))
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 2, len(data), 2835, 2835, 16, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + header + palette + data


def test_an_rle_bmp_counts_eight_times_its_pixels(live):
    # Pillow expands its runs in Python, a pixel at a time: 8 times a PNG's time a pixel
    assert live.post("/search?k=1", files=[upload(rle4_bmp(700, 700), "small.bmp", "image/bmp")]).status_code == 200
    assert_error(live.post("/search?k=1", files=[upload(rle4_bmp(800, 800), "rle.bmp", "image/bmp")]), 413,
                 "image_too_large", "5,120,000 pixels", "RLE-compressed BMP's counted 8 times")
    plain = encode(pattern(8, (800, 800)), "BMP")   # uncompressed: its pixels once
    assert live.post("/search?k=1", files=[upload(plain, "plain.bmp", "image/bmp")]).status_code == 200
