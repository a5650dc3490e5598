"""POST /index?skip_duplicates=SCORE: look-alikes of what the gallery holds are not stored, and say so."""
from __future__ import annotations

import io
import threading

import httpx
import pytest
from PIL import Image

from .conftest import REPO, SERVER_KEY, encode, pattern, running

pytestmark = pytest.mark.anyio


BUNDLED = REPO / "model" / "weights" / "hybrid1-cifar10.safetensors"   # a trained model: copies score near 1


def jpeg_file(data: bytes, name: str = "img.jpg"):
    return ("file", (name, data, "image/jpeg"))


def copy_of(data: bytes, quality: int = 75) -> bytes:
    """The picture saved again as JPEG, as an editor or a messenger app would (0.995 or more to its original
    for the CIFAR-10 model on these images; another picture of theirs scores 0.70 at most)."""
    return encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=quality)


def photo(seed: int) -> bytes:
    return encode(pattern(seed, (640, 480)), "JPEG", quality=92)


async def test_a_copy_is_skipped_naming_its_original_and_other_images_are_stored(make_settings, cifar):
    planes = cifar["airplane"]
    async with running(make_settings(model_path=BUNDLED)) as c:
        r = await c.post("/index", files=[jpeg_file(planes[0]), jpeg_file(planes[1])], data={"id": ["one", "two"]})
        assert r.status_code == 201 and r.json()["skipped"] == []

        # a copy of "one", a new picture, and the new picture again in the same request
        files = [jpeg_file(copy_of(planes[0])), jpeg_file(planes[2]), jpeg_file(copy_of(planes[2]))]
        r = await c.post("/index?skip_duplicates=0.98", files=files, data={"id": ["one-copy", "three", "three-copy"]})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["ids"] == ["three"] and body["count"] == 1
        assert [(s["file"], s["id"], s["duplicate_of"]) for s in body["skipped"]] == [
            (0, "one-copy", "one"), (2, "three-copy", "three")]
        assert all(0.98 <= s["score"] <= 1.0 + 1e-6 for s in body["skipped"])
        listing = (await c.get("/index")).json()
        assert listing["count"] == 3 and sorted(it["id"] for it in listing["items"]) == ["one", "three", "two"]
        for gone in ("one-copy", "three-copy"):
            assert (await c.get(f"/index/{gone}")).status_code == 404

        # the same id again is a replacement, not a look-alike of itself
        r = await c.post("/index?skip_duplicates=0.98", files=[jpeg_file(planes[1])], data={"id": "two", "label": "b"})
        assert r.json()["ids"] == ["two"] and r.json()["skipped"] == []
        assert (await c.get("/index/two")).json()["label"] == "b"

        # without the parameter nothing changes: the copy is stored
        r = await c.post("/index", files=[jpeg_file(copy_of(planes[0]))], data={"id": "one-copy"})
        assert r.json() == {"ids": ["one-copy"], "count": 1, "skipped": []}


async def test_the_threshold_decides_between_a_copy_and_another_picture(make_settings, cifar):
    planes = cifar["airplane"]
    async with running(make_settings(model_path=BUNDLED)) as c:
        await c.post("/index", files=[jpeg_file(planes[0])], data={"id": "one"})
        near = (await c.post("/search?k=1", files=[jpeg_file(planes[5])])).json()["results"][0]["score"]
        assert near < 0.9
        # against the one stored picture: a threshold just below their similarity skips it, just above stores it
        r = await c.post(f"/index?skip_duplicates={near - 0.001}", files=[jpeg_file(planes[5])], data={"id": "five"})
        assert r.json()["ids"] == [] and r.json()["skipped"] == [
            {"file": 0, "id": "five", "duplicate_of": "one", "score": pytest.approx(near, abs=1e-4)}]
        r = await c.post(f"/index?skip_duplicates={near + 0.001}", files=[jpeg_file(planes[5])], data={"id": "five"})
        assert r.json()["ids"] == ["five"] and r.json()["skipped"] == []


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "x"])
async def test_a_bad_threshold_is_422_and_nothing_is_stored(make_settings, value):
    async with running(make_settings()) as c:
        r = await c.post(f"/index?skip_duplicates={value}", files=[jpeg_file(photo(1))])
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_parameter" and "skip_duplicates" in r.json()["error"]["message"]
        assert (await c.get("/index")).json()["count"] == 0


def test_requests_racing_with_the_same_new_photo_store_it_once(server):
    """Four clients at once over real HTTP, each with the same new photo under its own id: the check is made
    in the commit, so one is stored and three are skipped naming it."""
    data = photo(1234)
    answers: list[dict] = []
    start = threading.Barrier(4)

    def client(i: int) -> None:
        start.wait()
        r = httpx.post(f"{server.url}/index?skip_duplicates=0.98&gallery=race", headers={"X-API-Key": SERVER_KEY},
                       files=[jpeg_file(data)], data={"id": f"racer-{i}"}, timeout=60)
        assert r.status_code == 201, r.text
        answers.append(r.json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [a["ids"][0] for a in answers if a["ids"]]
    assert len(answers) == 4 and len(stored) == 1
    skipped = [s for a in answers for s in a["skipped"]]
    assert len(skipped) == 3 and {s["duplicate_of"] for s in skipped} == set(stored)
    listing = httpx.get(f"{server.url}/index?gallery=race", headers={"X-API-Key": SERVER_KEY}).json()
    assert [it["id"] for it in listing["items"]] == stored
