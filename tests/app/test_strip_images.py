"""A strip-shaped PNG (1 x 1,000,000 pixels: 3 KB, within SIMSEARCH_MAX_PIXELS) uploaded to POST /index and
POST /search is answered as any image, in little server memory: the model's input is made from the window its
centre crop keeps. Before, the whole strip was enlarged first, to 32 x 32,000,000 pixels (gigabytes: a
memory DoS of the service for a 3 KB upload). Over real HTTP, against `simsearch serve`."""
from __future__ import annotations

import io
import resource
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .conftest import encode, start_server, stop_server
from .test_api import upload

KEY = "strip-key"
SHAPES = [(1, 1_000_000), (1_000_000, 1)]


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A real server, defaults otherwise (64 MP an image: a million-pixel strip is allowed)."""
    work = tmp_path_factory.mktemp("strips")
    server = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(work / "data"),
                           "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, work)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=300) as client:
        yield server, client
    stop_server(server)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_strip_png_is_indexed_and_searched_for_in_little_server_memory(live):
    server, client = live
    pid = server.proc.pid
    # warm up every path first (a normal PNG indexed, with its thumbnail, and searched for)
    square = encode(Image.new("RGB", (64, 64), (200, 40, 90)), "PNG")
    assert client.post("/index?gallery=strips", data={"id": ["square"]},
                       files=[upload(square, "square.png")]).status_code == 201
    assert client.post("/search?k=1&gallery=strips", files=[upload(square)]).status_code == 200
    # should a regression enlarge a strip whole again, the server fails that request with a MemoryError
    # rather than taking gigabytes of the machine the tests run on
    cap = (_status_kb(pid, "VmSize") + 2 * 1024 * 1024) * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (cap, cap))
    for w, h in SHAPES:
        data = encode(Image.new("RGB", (w, h), (200, 40, 90)), "PNG")
        assert len(data) < 20_000
        name = f"strip-{w}x{h}"
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")   # the server's peak resident size (VmHWM) starts again from the present
        before = _status_kb(pid, "VmRSS")
        r = client.post("/index?gallery=strips", data={"id": [name]}, files=[upload(data, name + ".png")])
        assert r.status_code == 201, r.text
        r = client.post("/search?k=10&gallery=strips", files=[upload(data, name + ".png")])
        assert r.status_code == 200, r.text
        growth_mb = (_status_kb(pid, "VmHWM") - before) / 1024
        # decoding the strip whole is 3-4 MB; enlarging it whole first was gigabytes
        assert growth_mb < 300, f"{name}: the server's peak resident memory grew {growth_mb:.0f} MB"
        hits = r.json()["results"]
        # a strip of one colour is that colour in the model's window: the same vector as itself, the square of
        # its colour and the other strip
        assert name in {hit["id"] for hit in hits}, hits
        assert min(hit["score"] for hit in hits) > 0.999, hits
        thumb = client.get(f"/index/{name}/thumbnail", params={"gallery": "strips"})
        assert thumb.status_code == 200
        tw, th = Image.open(io.BytesIO(thumb.content)).size
        assert max(tw, th) <= 256 and min(tw, th) == 1   # never enlarged: its long side the thumbnail's
    assert client.get("/healthz").status_code == 200
