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


# ---- GET /duplicates: the look-alike pairs a gallery holds ---------------------------------------

async def test_get_duplicates_finds_the_copies_marks_a_label_conflict_and_agrees_with_the_cli(make_settings, cifar,
                                                                                               capsys):
    import json

    from cli import main

    planes, cars = cifar["airplane"], cifar["automobile"]
    settings = make_settings(model_path=BUNDLED)
    async with running(settings) as c:
        files = [jpeg_file(d) for d in planes[:4] + cars[:4]]
        ids = [f"plane{i}" for i in range(4)] + [f"car{i}" for i in range(4)]
        labels = ["airplane"] * 4 + ["automobile"] * 4
        assert (await c.post("/index", files=files, data={"id": ids, "label": labels})).status_code == 201
        # a copy of plane0 under its own label, and one of car1 filed as an airplane
        r = await c.post("/index", files=[jpeg_file(copy_of(planes[0])), jpeg_file(copy_of(cars[1]))],
                         data={"id": ["plane0-copy", "car1-copy"], "label": ["airplane", "airplane"]})
        assert r.status_code == 201
        found = await c.get("/duplicates")
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["items"] == 10 and body["gallery"] == "default" and body["min_score"] == 0.98
        pairs = {(p["a"], p["b"]): p for p in body["pairs"]}
        assert set(pairs) == {("plane0", "plane0-copy"), ("car1", "car1-copy")}, body
        assert pairs[("car1", "car1-copy")]["labels_differ"] is True
        assert pairs[("car1", "car1-copy")]["label_a"] == "automobile"
        assert pairs[("plane0", "plane0-copy")]["labels_differ"] is False
        assert body["pairs_found"] == 2 and body["labels_differ"] == 1 and body["truncated"] is False
        assert [p["score"] for p in body["pairs"]] == sorted((p["score"] for p in body["pairs"]), reverse=True)
        only = (await c.get("/duplicates?conflicts=true")).json()
        assert [(p["a"], p["b"]) for p in only["pairs"]] == [("car1", "car1-copy")] and only["pairs_found"] == 2
        one = (await c.get("/duplicates?limit=1")).json()
        assert len(one["pairs"]) == 1 and one["truncated"] is True
        # a lower bar finds look-alikes too, more pairs than copies
        assert (await c.get("/duplicates?min_score=0.5&k=3")).json()["pairs_found"] > 2
        # the same pairs as `simsearch index duplicates`, reading the gallery beside the service
        assert main(["index", "duplicates", "--data", str(settings.data_dir), "--json"]) == 0
        cli_pairs = json.loads(capsys.readouterr().out)["pairs"]
        assert [(p["a"], p["b"], p["labels_differ"]) for p in cli_pairs] == \
            [(p["a"], p["b"], p["labels_differ"]) for p in body["pairs"]]


async def test_get_duplicates_needs_the_key_and_over_the_limit_is_a_422_that_names_the_setting(make_settings,
                                                                                                 cifar):
    async with running(make_settings(model_path=BUNDLED, max_duplicates_items=3, api_key="scan-key")) as c:
        c.headers["X-API-Key"] = "scan-key"
        files = [jpeg_file(d) for d in cifar["airplane"][:4]]
        assert (await c.post("/index", files=files, data={"id": ["a", "b", "c", "d"]})).status_code == 201
        # a scan of the whole gallery takes the key, as a write does, though searches do not
        assert (await c.get("/duplicates", headers={"X-API-Key": ""})).status_code == 401
        assert (await c.get("/duplicates", headers={"X-API-Key": "wrong"})).status_code == 403
        assert (await c.post("/search?k=1", files=files[:1], headers={"X-API-Key": ""})).status_code == 200
        r = await c.get("/duplicates")
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "gallery_too_large" and "4 items" in err["message"] and \
            "SIMSEARCH_MAX_DUPLICATES_ITEMS" in err["message"] and "simsearch index duplicates" in err["message"]
        for bad in ("min_score=0", "min_score=1.5", "k=0", "limit=0"):
            assert (await c.get(f"/duplicates?{bad}")).status_code == 422
        # a named gallery under the limit is served
        assert (await c.post("/index?gallery=pets", files=files[:2], data={"id": ["p", "q"]})).status_code == 201
        small = await c.get("/duplicates?gallery=pets")
        assert small.status_code == 200 and small.json()["items"] == 2 and small.json()["gallery"] == "pets"
        assert (await c.get("/healthz")).status_code == 200
