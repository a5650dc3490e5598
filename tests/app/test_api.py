"""The API in-process (ASGI, with its lifespan): the real model, the real Store and FAISS."""
from __future__ import annotations

import io
import json

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import encode, pattern, running

pytestmark = pytest.mark.anyio


def png(seed: int, size=(64, 48)) -> bytes:
    return encode(pattern(seed, size), "PNG")


def upload(data: bytes, name: str = "img.png", ctype: str = "image/png"):
    return ("file", (name, data, ctype))


def assert_error(r: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], err
    return err


async def still_serving(c: httpx.AsyncClient) -> None:
    """After a bad request the service answers good ones."""
    assert (await c.get("/healthz")).status_code == 200
    r = await c.post("/search?k=1", files=[upload(png(99))])
    assert r.status_code == 200, r.text


# ---- the happy paths ---------------------------------------------------------------------------

async def test_index_then_search_finds_the_same_image_first_with_score_one(make_settings, cifar):
    async with running(make_settings()) as c:
        planes, cars = cifar["airplane"], cifar["automobile"]
        files = [upload(b, f"p{i}.jpg", "image/jpeg") for i, b in enumerate(planes)]
        r = await c.post("/index", files=files, data={"label": "airplane"})
        assert r.status_code == 201, r.text
        ids = r.json()["ids"]
        assert len(ids) == len(planes) == r.json()["count"] and len(set(ids)) == len(ids)
        for i in (0, 5):
            r = await c.post("/search?k=3", files=[upload(planes[i], "q.jpg", "image/jpeg")])
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["results"][0]["id"] == ids[i]
            assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
            assert body["results"][0]["distance"] == pytest.approx(0.0, abs=2e-3)
            assert body["results"][0]["label"] == "airplane"
            assert [h["score"] for h in body["results"]] == sorted((h["score"] for h in body["results"]), reverse=True)
            assert body["k"] == 3 and body["took_ms"] > 0 and body["model"].startswith("hybrid1-test@")
        r = await c.post("/search?k=1", files=[upload(cars[0], "car.jpg", "image/jpeg")])
        assert r.status_code == 200 and r.json()["results"][0]["score"] < 1.0 - 1e-6


async def test_a_large_photo_gets_the_same_vector_when_indexed_and_searched(make_settings, hybrid1_artifact):
    import model

    # 1000x700: libjpeg's reduced-scale decoding (draft) picks different scales for a 128-pixel
    # thumbnail and for the 32-pixel model input, so decoding once for both would change the vector.
    photo = encode(pattern(8, (1000, 700)), "JPEG", quality=92)
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(photo, "big.jpg", "image/jpeg")], data={"id": "big"})
        await c.post("/index", files=[upload(encode(pattern(8, (1600, 1200)).rotate(3), "JPEG"), "near.jpg")],
                     data={"id": "near"})
        hit = (await c.post("/search?k=2", files=[upload(photo, "q.jpg", "image/jpeg")])).json()["results"][0]
        assert hit["id"] == "big" and hit["score"] == pytest.approx(1.0, abs=1e-6)
        # and the same vector as the Embedder gives for the file (what `simsearch index build` stores)
        stored = c.app.state.service.store.get("big").vector
        direct = model.Embedder.from_file(hybrid1_artifact, device="cpu").embed([Image.open(io.BytesIO(photo))])[0]
        assert np.abs(stored - direct).max() < 1e-6


async def test_a_48_megapixel_phone_photo_is_indexed_and_found_under_the_default_limits(make_settings):
    # 8064x6048, a 48 MP phone mode; a smooth picture keeps the JPEG under the 10 MiB body limit
    photo = encode(pattern(9, (252, 189)).resize((8064, 6048), Image.Resampling.BILINEAR), "JPEG", quality=85)
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(photo, "48mp.jpg", "image/jpeg")], data={"id": "48mp"})
        assert r.status_code == 201, r.text
        hit = (await c.post("/search?k=1", files=[upload(photo, "q.jpg", "image/jpeg")])).json()["results"][0]
        assert hit["id"] == "48mp" and hit["score"] == pytest.approx(1.0, abs=1e-6)


async def test_search_caps_results_at_k_and_at_the_gallery_size(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/search", files=[upload(png(1))])
        assert r.status_code == 200 and r.json()["results"] == []
        await c.post("/index", files=[upload(png(i)) for i in range(12)])
        assert len((await c.post("/search", files=[upload(png(1))])).json()["results"]) == 10   # default k
        assert len((await c.post("/search?k=3", files=[upload(png(1))])).json()["results"]) == 3
        assert len((await c.post("/search?k=1000", files=[upload(png(1))])).json()["results"]) == 12


async def test_label_filter_returns_only_that_label(make_settings, cifar):
    async with running(make_settings()) as c:
        for label in ("airplane", "automobile"):
            r = await c.post("/index", files=[upload(b, "x.jpg") for b in cifar[label]], data={"label": label})
            assert r.status_code == 201
        query = [upload(cifar["airplane"][0], "q.jpg")]
        r = await c.post("/search?k=20&label=automobile", files=query)
        hits = r.json()["results"]
        assert len(hits) == 8 and {h["label"] for h in hits} == {"automobile"}
        r = await c.post("/search?k=20", files=query)
        assert {h["label"] for h in r.json()["results"]} == {"airplane", "automobile"}
        r = await c.post("/search?k=20&label=ship", files=query)
        assert r.status_code == 200 and r.json()["results"] == []


async def test_where_filters_searches_by_metadata_with_json_types(make_settings):
    async with running(make_settings()) as c:
        metas = ['{"album": "trip", "year": 2024}', '{"album": "trip", "year": "2024"}',
                 '{"album": "home", "year": 2024}', '{"album": "trip", "year": 2023}', '{}']
        r = await c.post("/index", files=[upload(png(i)) for i in range(5)],
                         data={"id": [f"m{i}" for i in range(5)], "metadata": metas})
        assert r.status_code == 201, r.text

        async def ids(path: str, where: str, **params) -> list[str]:
            r = await c.post(path, params={"k": 10, "where": where, **params},
                             files=[upload(png(0))] if path == "/search" else None)
            assert r.status_code == 200, r.text
            return sorted(h["id"] for h in r.json()["results"])

        assert await ids("/search", '{"album": "trip"}') == ["m0", "m1", "m3"]
        assert await ids("/search", '{"year": 2024, "album": "trip"}') == ["m0"]  # 2024, not "2024"
        assert await ids("/search", '{"year": "2024"}') == ["m1"]
        assert await ids("/search", '{"album": "none"}') == []
        assert await ids("/search/m0", '{"album": "trip"}') == ["m1", "m3"]  # m0 itself left out
        listing = (await c.get("/index", params={"where": '{"album": "trip"}', "limit": 2})).json()
        assert [i["id"] for i in listing["items"]] == ["m0", "m1"] and listing["next_offset"] == 2
        assert (listing["count"], listing["matching"]) == (5, 3)
        assert (await c.get("/index")).json()["matching"] is None
        assert_error(await c.get("/index", params={"where": "[1]"}), 422, "invalid_parameter", "non-empty object")
        # as the raw body too, and with the same answer
        r = await c.post("/search", params={"k": 10, "where": '{"album": "home"}'}, content=png(0),
                         headers={"Content-Type": "image/png"})
        assert [h["id"] for h in r.json()["results"]] == ["m2"]


@pytest.mark.parametrize("where, words", [
    ("{album", ["not valid JSON"]), ('["trip"]', ["non-empty object"]), ("{}", ["non-empty object"]),
    ('{"tags": ["x"]}', ["'tags'", "must be a string, number, true, false or null"]),
    ('{"year": {"$after": 2020}}', ["'year'", "unknown operator '$after'", "$gte"]),
    ('{"year": {"$in": 2020}}', ["'year'.$in must be a non-empty list"]),
    ('{"n": NaN}', ["not valid JSON", "NaN"]), ("null", ["where=null", "or leave where out"])])
async def test_a_bad_where_is_422_naming_it_and_the_service_keeps_serving(make_settings, where, words):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(1))], data={"id": "x"})
        assert_error(await c.post("/search", params={"where": where}, files=[upload(png(1))]), 422,
                     "invalid_parameter", *words)
        assert_error(await c.post("/search/x", params={"where": where}), 422, "invalid_parameter", *words)
        await still_serving(c)


async def test_where_operators_and_delete_by_filter_over_the_api(make_settings):
    async with running(make_settings()) as c:
        metas = [json.dumps({"year": 2018 + i, "src": "phone" if i % 2 else "camera"}) for i in range(6)]
        r = await c.post("/index", files=[upload(png(i)) for i in range(6)],
                         data={"id": [f"y{i}" for i in range(6)], "metadata": metas})
        assert r.status_code == 201, r.text

        async def ids(where: str) -> list[str]:
            r = await c.post("/search", params={"k": 10, "where": where}, files=[upload(png(0))])
            assert r.status_code == 200, r.text
            return sorted(h["id"] for h in r.json()["results"])

        assert await ids('{"year": {"$gte": 2020, "$lt": 2023}}') == ["y2", "y3", "y4"]
        assert await ids('{"year": {"$in": [2018, 2023]}, "src": {"$ne": "phone"}}') == ["y0"]
        assert await ids('{"$or": [{"year": 2018}, {"year": {"$gt": 2022}}]}') == ["y0", "y5"]
        assert (await c.get("/index", params={"where": '{"src": "phone"}'})).json()["matching"] == 3
        # DELETE /index: what matches goes, and only that; never without a filter
        assert_error(await c.delete("/index"), 422, "invalid_parameter", "needs label or where")
        assert_error(await c.delete("/index", params={"where": "null"}), 422, "invalid_parameter", "where=null")
        assert_error(await c.delete("/index", params={"where": '{"year": {"$gt": []}}'}), 422,
                     "invalid_parameter", "'year'.$gt must be a number or a string")
        r = await c.delete("/index", params={"where": '{"src": "phone", "year": {"$lte": 2021}}'})
        assert r.status_code == 200 and r.json() == {"deleted": 2}, r.text
        listing = (await c.get("/index")).json()
        assert sorted(i["id"] for i in listing["items"]) == ["y0", "y2", "y4", "y5"]
        r = await c.delete("/index", params={"where": '{"src": "nobody"}'})
        assert r.json() == {"deleted": 0}
        await still_serving(c)


async def test_patch_changes_label_and_metadata_and_searches_see_it(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(i)) for i in range(2)],
                         data={"id": ["p0", "p1"], "label": "cat", "metadata": '{"album": "trip", "stars": 1}'})
        assert r.status_code == 201, r.text
        r = await c.patch("/index/p0", json={"label": "dog", "metadata": {"stars": 5, "album": None, "seen": True}})
        assert r.status_code == 200, r.text
        assert r.json() == {"id": "p0", "label": "dog", "metadata": {"stars": 5, "seen": True}}
        assert (await c.get("/index/p0")).json() == r.json()
        hits = (await c.post("/search", params={"k": 5, "where": '{"stars": {"$gt": 2}}'}, files=[upload(png(0))])).json()
        assert [(h["id"], h["label"]) for h in hits["results"]] == [("p0", "dog")]
        r = await c.patch("/index/p1", content=b'{"label": null}', headers={"Content-Type": "application/merge-patch+json"})
        assert r.json()["label"] is None and r.json()["metadata"] == {"album": "trip", "stars": 1}
        for kwargs, status, code, words in (
                ({"json": {"label": "x"}, "url": "/index/nobody"}, 404, "not_found", ["nobody"]),
                ({"json": {"labels": "x"}}, 422, "invalid_metadata", ["'labels'"]),
                ({"json": {}}, 422, "invalid_metadata", ['"label" and/or "metadata"']),
                ({"json": {"metadata": [1]}}, 422, "invalid_metadata", ["must be a JSON object"]),
                ({"json": {"label": 7}}, 422, "invalid_label", ["string or null"]),
                ({"json": {"label": "a\nb"}}, 422, "invalid_label", ["control characters"]),
                ({"json": {"metadata": {"big": "x" * 70_000}}}, 422, "invalid_metadata", ["more than 65536"]),
                ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 422, "invalid_metadata", ["not valid JSON"]),
                ({"content": b"label=x", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type", ["text/plain"]),
                ({"json": {"label": "x"}, "url": "/index/%20p1"}, 422, "invalid_id", ["surrounding spaces"])):
            url = kwargs.pop("url", "/index/p1")
            assert_error(await c.patch(url, **kwargs), status, code, *words)
        assert (await c.get("/index/p1")).json()["metadata"] == {"album": "trip", "stars": 1}  # refused: unchanged
        await still_serving(c)


async def test_embed_returns_the_vectors_a_search_uses_and_stores_nothing(make_settings, hybrid1_artifact, cifar):
    import model

    photos = cifar["airplane"][:3]
    async with running(make_settings()) as c:
        r = await c.post("/embed", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(photos)])
        assert r.status_code == 200, r.text
        body = r.json()
        vectors = np.array(body["vectors"], dtype=np.float32)
        assert body["dimension"] == 256 and vectors.shape == (3, 256) and body["model"].startswith("hybrid1-test@")
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        # the same vectors the model gives those files in-process
        direct = model.Embedder.from_file(hybrid1_artifact, device="cpu").embed(
            [Image.open(io.BytesIO(b)) for b in photos])
        assert np.allclose(vectors, direct, atol=1e-5)
        raw = await c.post("/embed", content=photos[1], headers={"Content-Type": "image/jpeg"})
        assert np.allclose(raw.json()["vectors"][0], vectors[1], atol=1e-6)
        assert (await c.get("/index")).json()["count"] == 0  # nothing stored
        # once indexed, the stored vector is the one /embed gave, with vector=true (for export)
        await c.post("/index", files=[upload(photos[2], "p.jpg", "image/jpeg")], data={"id": "p2"})
        stored = (await c.get("/index/p2", params={"vector": "true"})).json()["vector"]
        assert np.allclose(stored, vectors[2], atol=1e-6)
        assert "vector" not in (await c.get("/index/p2")).json()
        listing = (await c.get("/index", params={"vector": "true"})).json()["items"]
        assert np.allclose(listing[0]["vector"], vectors[2], atol=1e-6)
        assert "vector" not in (await c.get("/index")).json()["items"][0]
        assert_error(await c.post("/embed", files=[upload(b"%PDF-1.4", "x.pdf")]), 415, "unsupported_format")
        await still_serving(c)


async def test_search_by_vector_answers_as_the_image_would_and_refuses_bad_vectors(make_settings, cifar):
    photos = cifar["automobile"][:4]
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(photos)],
                         data={"id": [f"s{i}" for i in range(4)], "metadata": ['{"n": 0}', '{"n": 1}', '{"n": 2}', '{"n": 3}']})
        assert r.status_code == 201, r.text
        vector = (await c.post("/embed", files=[upload(photos[1], "q.jpg", "image/jpeg")])).json()["vectors"][0]
        by_image = (await c.post("/search?k=3", files=[upload(photos[1], "q.jpg", "image/jpeg")])).json()["results"]
        r = await c.post("/search?k=3", json={"vector": vector})
        assert r.status_code == 200, r.text
        by_vector = r.json()["results"]
        assert [h["id"] for h in by_vector] == [h["id"] for h in by_image] and by_vector[0]["id"] == "s1"
        assert np.allclose([h["score"] for h in by_vector], [h["score"] for h in by_image], atol=1e-5)
        # any length is normalised; the filters apply as for an image
        r = await c.post("/search", params={"k": 3, "where": '{"n": {"$gte": 2}}'}, json={"vector": [3 * x for x in vector]})
        assert sorted(h["id"] for h in r.json()["results"]) == ["s2", "s3"]
        for body, words in ((b'{"vector": [1, 2', ["not valid JSON"]), (b'[1, 2]', ['{"vector": [...]}', "list"]),
                            (b'{"vector": [1], "k": 3}', ["nothing else", "'k'"]),
                            (b'{"vector": [1], "model": 7}', ["model must be a string", "int"]),
                            (b'{"vector": [1, 2, 3]}', ["list of 256 numbers", "got a list of 3 values"]),
                            (json.dumps({"vector": [0] * 256}).encode(), ["finite, non-zero length"]),
                            (b'{"vector": [1e999' + b', 0' * 255 + b']}', ["finite, non-zero length"]),  # inf
                            (json.dumps({"vector": [True] * 256}).encode(), ["vector[0] must be a number, got true"]),
                            (json.dumps({"vector": [0.5] * 7 + [[1]] + [0.5] * 248}).encode(),
                             ["vector[7] must be a number, got [1]"]),
                            (b'{"vector": [NaN]}', ["not valid JSON", "NaN"])):
            assert_error(await c.post("/search", content=body, headers={"Content-Type": "application/json"}),
                         422, "invalid_vector", *words)
        # a vector may say which model made it; another model's is refused, this service's answered
        model_id = (await c.get("/readyz")).json()["model"]
        r = await c.post("/search?k=3", json={"vector": vector, "model": model_id})
        assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == [h["id"] for h in by_image]
        assert_error(await c.post("/search", json={"vector": vector, "model": "hybrid1-cifar10@80e598ecc6a6"}),
                     409, "model_mismatch", "'hybrid1-cifar10@80e598ecc6a6'", repr(model_id), "model-export")
        await still_serving(c)


async def test_batch_search_answers_each_query_as_its_own_search_would(make_settings, cifar):
    planes, cars = cifar["airplane"][:4], cifar["automobile"][:4]
    async with running(make_settings(batch_max_wait_ms=0)) as c:
        r = await c.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(planes + cars)],
                         data={"id": [f"p{i}" for i in range(4)] + [f"c{i}" for i in range(4)],
                               "label": ["airplane"] * 4 + ["automobile"] * 4})
        assert r.status_code == 201, r.text
        queries = [(planes[2], "plane.jpg"), (cars[1], "car.jpg"), (planes[0], "third.jpg")]
        r = await c.post("/batch/search?k=3", files=[upload(b, n, "image/jpeg") for b, n in queries])
        assert r.status_code == 200, r.text
        body = r.json()
        assert [q["name"] for q in body["queries"]] == ["plane.jpg", "car.jpg", "third.jpg"]
        assert body["k"] == 3 and body["model"].startswith("hybrid1-test@") and body["reranked"] is False
        for (image, _), got in zip(queries, body["queries"]):
            single = (await c.post("/search?k=3", files=[upload(image, "q.jpg", "image/jpeg")])).json()["results"]
            assert [h["id"] for h in got["results"]] == [h["id"] for h in single]
            assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in single], abs=1e-5)
        assert [q["results"][0]["id"] for q in body["queries"]] == ["p2", "c1", "p0"]
        # the filters apply to every query
        r = await c.post("/batch/search", params={"k": 8, "label": "automobile"},
                         files=[upload(b, "q.jpg", "image/jpeg") for b, _ in queries])
        assert all({h["label"] for h in q["results"]} == {"automobile"} and len(q["results"]) == 4
                   for q in r.json()["queries"])
        # vectors answer as the images would; one image as the body is one query
        vectors = (await c.post("/embed", files=[upload(b, "q.jpg", "image/jpeg") for b, _ in queries])).json()["vectors"]
        r = await c.post("/batch/search?k=3", json={"vectors": vectors, "model": body["model"]})
        assert r.status_code == 200, r.text
        assert [[h["id"] for h in q["results"]] for q in r.json()["queries"]] == \
            [[h["id"] for h in q["results"]] for q in body["queries"]]
        r = await c.post("/batch/search?k=1", content=cars[3], headers={"Content-Type": "image/jpeg"})
        assert r.json()["queries"] == [{"name": None, "results": [r.json()["queries"][0]["results"][0]]}]
        assert r.json()["queries"][0]["results"][0]["id"] == "c3"


async def test_batch_search_refuses_the_whole_request_naming_the_bad_query(make_settings, cifar):
    async with running(make_settings(max_files_per_request=4)) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(3)])
        good = upload(cifar["airplane"][0], "a.jpg", "image/jpeg")
        assert_error(await c.post("/batch/search", files=[good, upload(b"%PDF-1.4", "notes.pdf")]),
                     415, "unsupported_format", "file 1", "notes.pdf")
        assert_error(await c.post("/batch/search", files=[good] * 5), 413, "too_many_parts", "4")
        assert_error(await c.post("/batch/search", json={"vectors": [[1.0] * 256] * 5}), 413, "too_many_vectors",
                     "5 vectors", "at most 4")
        for body, words in (({"vectors": [[1.0] * 256, [1.0] * 3]}, ["vectors[1]", "list of 256 numbers"]),
                            ({"vectors": [[0.0] * 256]}, ["vectors[0]", "finite, non-zero length"]),
                            ({"vectors": []}, ["non-empty list"]),
                            ({"vector": [1.0] * 256}, ['{"vectors": [[...], ...]}', "'vector'"])):
            assert_error(await c.post("/batch/search", json=body), 422, "invalid_vector", *words)
        assert_error(await c.post("/batch/search", json={"vectors": [[1.0] * 256], "model": "other@000000000000"}),
                     409, "model_mismatch", "'other@000000000000'")
        assert_error(await c.post("/batch/search?k=0", files=[good]), 422, "invalid_parameter", "k")
        assert_error(await c.post("/batch/search?rerank=5", files=[good]), 422, "invalid_parameter", "no PDDM")
        assert_error(await c.post("/batch/search", params={"where": "{"}, files=[good]), 422, "invalid_parameter", "where")
        r = await c.post("/batch/search?k=2", files=[good, good])
        assert r.status_code == 200 and [len(q["results"]) for q in r.json()["queries"]] == [2, 2]
        await still_serving(c)


async def test_max_distance_drops_farther_neighbours(make_settings):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(6)], data={"id": [f"i{i}" for i in range(6)]})
        r = await c.post("/search?k=10&max_distance=0.000001", files=[upload(png(3))])
        assert [h["id"] for h in r.json()["results"]] == ["i3"]


async def test_ids_labels_and_metadata_per_file_or_shared(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1)), upload(png(2))],
                         data={"id": ["a", "b"], "label": ["cat", "dog"],
                               "metadata": ['{"n": 1}', '{"n": 2, "tags": ["x"]}']})
        assert r.status_code == 201 and r.json()["ids"] == ["a", "b"]
        assert (await c.get("/index/a")).json() == {"id": "a", "label": "cat", "metadata": {"n": 1}}
        assert (await c.get("/index/b")).json() == {"id": "b", "label": "dog", "metadata": {"n": 2, "tags": ["x"]}}
        r = await c.post("/index", files=[upload(png(3)), upload(png(4))],
                         data={"id": ["c", "d"], "label": "bird", "metadata": '{"src": "cam"}'})
        assert r.status_code == 201
        for i in ("c", "d"):
            assert (await c.get(f"/index/{i}")).json() == {"id": i, "label": "bird", "metadata": {"src": "cam"}}


async def test_same_id_again_replaces_the_item(make_settings):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(1)), upload(png(2))], data={"id": ["x", "y"], "label": "old"})
        r = await c.post("/index", files=[upload(png(7))], data={"id": "x", "label": "new"})
        assert r.status_code == 201 and r.json()["ids"] == ["x"]
        assert (await c.get("/index")).json()["count"] == 2
        assert (await c.get("/index/x")).json()["label"] == "new"
        hit = (await c.post("/search?k=1", files=[upload(png(7))])).json()["results"][0]
        assert hit["id"] == "x" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        hit = (await c.post("/search?k=1", files=[upload(png(1))])).json()["results"][0]
        assert hit["score"] < 1.0 - 1e-6   # the old image is gone


async def test_delete_then_get_search_and_delete_are_404(make_settings):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(1)), upload(png(2))], data={"id": ["a", "b"]})
        r = await c.delete("/index/a")
        assert r.status_code == 204 and r.content == b""
        assert_error(await c.get("/index/a"), 404, "not_found", "'a'")
        assert_error(await c.delete("/index/a"), 404, "not_found", "'a'")
        assert_error(await c.delete("/index/" + "x" * 2000), 404, "not_found")  # an id no item can have: a 500 until 2026-12-02
        assert_error(await c.post("/search/a"), 404, "not_found", "'a'")
        assert_error(await c.get("/index/a/thumbnail"), 404, "not_found")
        ids = [h["id"] for h in (await c.post("/search?k=10", files=[upload(png(1))])).json()["results"]]
        assert ids == ["b"]
        await still_serving(c)


async def test_ids_with_slashes_work_on_every_id_route(make_settings):
    # `simsearch index build` uses relative paths ("cat/0001.jpg") as ids; the page escapes them (%2F).
    async with running(make_settings()) as c:
        ids = ["cat/0001.jpg", "dog/sub/0002.jpg"]
        r = await c.post("/index", files=[upload(png(1)), upload(png(2))], data={"id": ids})
        assert r.status_code == 201 and r.json()["ids"] == ids
        for path in ("/index/cat/0001.jpg", "/index/cat%2F0001.jpg"):
            assert (await c.get(path)).json()["id"] == "cat/0001.jpg"
        thumb = await c.get("/index/dog%2Fsub%2F0002.jpg/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        hits = (await c.post("/search/cat%2F0001.jpg?k=5")).json()["results"]
        assert [h["id"] for h in hits] == ["dog/sub/0002.jpg"]
        assert (await c.delete("/index/dog/sub/0002.jpg")).status_code == 204
        assert_error(await c.get("/index/dog/sub/0002.jpg"), 404, "not_found", "dog/sub/0002.jpg")
        metrics = (await c.get("/metrics")).text
        assert 'route="/index/{id}/thumbnail",status="200"' in metrics and "{id:path}" not in metrics


async def test_search_by_id_excludes_the_item_and_filters(make_settings):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(5)],
                     data={"id": [f"i{i}" for i in range(5)], "label": ["a", "a", "b", "b", "b"]})
        r = await c.post("/search/i0?k=10")
        assert r.status_code == 200
        assert sorted(h["id"] for h in r.json()["results"]) == ["i1", "i2", "i3", "i4"]
        r = await c.post("/search/i0?k=10&label=b")
        assert sorted(h["id"] for h in r.json()["results"]) == ["i2", "i3", "i4"]
        assert_error(await c.post("/search/i0?k=0"), 422, "invalid_parameter", "k")


async def test_listing_paginates_in_insertion_order_with_counts(make_settings):
    async with running(make_settings(index="flat")) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(5)],
                     data={"id": [f"i{i}" for i in range(5)], "label": ["a", "b", "a", "b", "a"]})
        first = (await c.get("/index?limit=2")).json()
        assert first["count"] == 5 and first["dimension"] == 256 and first["index"] == "flat"
        assert first["model"].startswith("hybrid1-test@")
        assert [i["id"] for i in first["items"]] == ["i0", "i1"] and first["next_offset"] == 2
        second = (await c.get("/index?limit=2&offset=2")).json()
        assert [i["id"] for i in second["items"]] == ["i2", "i3"] and second["next_offset"] == 4
        last = (await c.get("/index?limit=2&offset=4")).json()
        assert [i["id"] for i in last["items"]] == ["i4"] and last["next_offset"] is None
        only_a = (await c.get("/index?label=a")).json()
        assert [i["id"] for i in only_a["items"]] == ["i0", "i2", "i4"]
        assert_error(await c.get("/index?limit=-1"), 422, "invalid_parameter", "limit")   # 0 counts (a test below)
        assert_error(await c.get("/index?offset=-1"), 422, "invalid_parameter", "offset")
        assert_error(await c.get(f"/index?offset={2**63}"), 422, "invalid_parameter", "offset")   # past SQLite's integers


async def test_a_listing_with_limit_0_counts_the_items_and_lists_none_with_no_next_page(make_settings):
    async with running(make_settings(index="flat")) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(3)],
                     data={"id": ["c0", "c1", "c2"], "label": ["a", "b", "a"],
                           "metadata": [json.dumps({"n": i}) for i in range(3)]})
        r = await c.get("/index?limit=0")
        assert r.status_code == 200, r.text
        counted = r.json()
        assert counted["count"] == 3 and counted["matching"] is None and counted["items"] == []
        assert counted["limit"] == 0 and counted["next_offset"] is None and counted["next_after"] is None
        assert counted["position"] == r.headers["x-simsearch-position"]
        only_a = (await c.get("/index", params={"limit": 0, "label": "a", "where": '{"n": {"$gte": 1}}'})).json()
        assert only_a["count"] == 3 and only_a["matching"] == 1 and only_a["items"] == []
        paged = (await c.get("/index?limit=0&offset=1&after=1")).json()
        assert paged["items"] == [] and paged["next_offset"] is None and paged["next_after"] is None
        assert_error(await c.get("/index?limit=-1"), 422, "invalid_parameter", "limit")


async def test_listing_paged_by_next_after_skips_no_unchanged_item_when_an_earlier_one_is_deleted(make_settings):
    async with running(make_settings(index="flat")) as c:
        ids = [f"p{i:02d}" for i in range(9)]
        await c.post("/index", files=[upload(png(i)) for i in range(9)],
                     data={"id": ids, "label": ["a", "b", "a"] * 3,
                           "metadata": [json.dumps({"n": i}) for i in range(9)]})

        async def export(query: str, between=None) -> list[str]:
            seen, after, pages = [], None, 0
            while True:
                page = (await c.get(f"/index?limit=3{query}" + (f"&after={after}" if after is not None else ""))).json()
                assert page["after"] == after
                seen += [i["id"] for i in page["items"]]
                after, pages = page["next_after"], pages + 1
                if after is None:
                    return seen
                if between is not None and pages == 1:
                    await between()

        async def delete_and_replace():   # another client: deletes an item already read, re-posts another
            assert (await c.delete("/index/p00")).status_code == 204
            r = await c.post("/index", files=[upload(png(1))], data={"id": "p01", "label": "b"})
            assert r.status_code == 201

        # with offsets the delete would move p03 back onto the first page, and the second page start at p04
        assert await export("", delete_and_replace) == ids + ["p01"]   # the replaced item again, at the end
        assert await export("&label=a") == ["p02", "p03", "p05", "p06", "p08"]
        assert await export("&where=" + json.dumps({"n": {"$gte": 6}})) == ["p06", "p07", "p08"]
        first = (await c.get("/index?limit=2")).json()
        assert [i["id"] for i in first["items"]] == ["p02", "p03"] and first["next_offset"] == 2
        on = (await c.get(f"/index?limit=2&after={first['next_after']}&offset=1")).json()
        assert [i["id"] for i in on["items"]] == ["p05", "p06"]   # an offset counts on from `after`
        assert_error(await c.get("/index?after=-1"), 422, "invalid_parameter", "after")
        assert_error(await c.get("/index?after=1.5"), 422, "invalid_parameter", "after")


async def test_thumbnail_is_stored_as_jpeg_of_the_configured_size(make_settings):
    async with running(make_settings(thumbnail_size=96)) as c:
        await c.post("/index", files=[upload(png(1, (300, 150)))], data={"id": "wide"})
        r = await c.get("/index/wide/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (96, 48)


async def test_thumbnail_size_zero_stores_no_image(make_settings):
    async with running(make_settings(thumbnail_size=0)) as c:
        await c.post("/index", files=[upload(png(1))], data={"id": "a"})
        assert (await c.get("/index/a")).status_code == 200
        assert_error(await c.get("/index/a/thumbnail"), 404, "not_found", "'a'")


async def test_concurrent_searches_are_embedded_together(make_settings):
    async with running(make_settings(batch_max_wait_ms=200, batch_max_size=32)) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(4)], data={"id": ["a", "b", "c", "d"]})
        results = {}

        async def one(i):
            r = await c.post("/search?k=1", files=[upload(png(i % 4))])
            results[i] = r.json()["results"][0]["id"]

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert results == {i: "abcd"[i % 4] for i in range(8)}   # each got its own answer
        metrics = (await c.get("/metrics")).text
        count = _sample(metrics, "simsearch_embed_batch_size_count")
        total = _sample(metrics, "simsearch_embed_batch_size_sum")
        assert total == 4 + 8 and count < 1 + 8, metrics   # fewer model calls than requests


async def test_search_takes_the_image_itself_as_the_body_with_the_same_answer(make_settings, cifar):
    async with running(make_settings()) as c:
        planes = cifar["airplane"][:4]
        r = await c.post("/index", files=[upload(b, f"p{i}.jpg", "image/jpeg") for i, b in enumerate(planes)],
                         data={"id": ["p0", "p1", "p2", "p3"]})
        assert r.status_code == 201, r.text
        multipart = (await c.post("/search?k=4", files=[upload(planes[2], "q.jpg", "image/jpeg")])).json()
        for ctype in ("image/jpeg", "application/octet-stream", "image/jpeg; charset=binary"):
            r = await c.post("/search?k=4", content=planes[2], headers={"content-type": ctype})
            assert r.status_code == 200, (ctype, r.text)
            raw = r.json()
            assert raw["results"][0]["id"] == "p2"
            assert [h["id"] for h in raw["results"]] == [h["id"] for h in multipart["results"]]
            assert [h["score"] for h in raw["results"]] == pytest.approx([h["score"] for h in multipart["results"]])
        # The bytes decide the format, not the declared type.
        r = await c.post("/search?k=1", content=planes[1], headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "p1"


async def test_objects_loaded_at_startup_are_frozen_out_of_the_garbage_collector(make_settings):
    import gc

    gc.unfreeze()   # process-wide: start from nothing frozen
    assert gc.get_freeze_count() == 0
    async with running(make_settings()) as c:
        assert (await c.get("/readyz")).status_code == 200
        # the model, FAISS and the store were loaded before the freeze: full collections skip them
        assert gc.get_freeze_count() > 10_000


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def test_metrics_count_requests_by_route_and_status_and_time_embed_and_search(make_settings):
    async with running(make_settings()) as c:
        await c.post("/index", files=[upload(png(1)), upload(png(2))])
        await c.post("/search", files=[upload(png(1))])
        await c.get("/index/nope")
        await c.post("/search?k=0", files=[upload(png(1))])
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'simsearch_requests_total{method="POST",route="/index",status="201"} 1.0' in text
        assert 'simsearch_requests_total{method="POST",route="/search",status="200"} 1.0' in text
        assert 'simsearch_requests_total{method="GET",route="/index/{id}",status="404"} 1.0' in text
        assert 'simsearch_requests_total{method="POST",route="/search",status="422"} 1.0' in text
        assert 'simsearch_request_duration_seconds_count{method="POST",route="/search",status="200"} 1.0' in text
        assert _sample(text, "simsearch_embed_seconds_count") >= 2
        assert _sample(text, "simsearch_search_seconds_count") >= 1
        assert _sample(text, "simsearch_gallery_items") == 2
        assert _sample(text, "simsearch_ready") == 1
        # the process's memory (the index lives in it), CPU time and open files, for an operator's alerts
        assert _sample(text, "process_resident_memory_bytes") > 50e6 and _sample(text, "process_open_fds") > 0


async def test_the_probes_answer_the_openapi_lists_each_route_once_and_the_page_is_served(make_settings):
    async with running(make_settings()) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = (await c.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["model"].startswith("hybrid1-test@")
        assert ready["runtime"] == "TorchScript graph"
        spec = (await c.get("/openapi.json")).json()
        for path in ("/search", "/search/{id}", "/index", "/index/{id}", "/index/{id}/thumbnail", "/healthz"):
            assert path in spec["paths"], path
        assert "multipart/form-data" in spec["paths"]["/search"]["post"]["requestBody"]["content"]
        ids = [op["operationId"] for methods in spec["paths"].values() for op in methods.values()]
        assert len(ids) == len(set(ids))   # a client generator names a function by each
        assert (await c.head("/healthz")).status_code == 200 and "head" not in spec["paths"]["/healthz"]
        assert (await c.get("/docs")).status_code == 200
        page = await c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await c.get("/static/index.html")).text == page.text


async def test_page_absent_is_a_json_404(make_settings, monkeypatch, tmp_path):
    import app._routes_probes

    monkeypatch.setattr(app._routes_probes, "STATIC_DIR", tmp_path / "empty")
    async with running(make_settings()) as c:
        assert_error(await c.get("/"), 404, "not_found", "index.html")


# ---- readiness -----------------------------------------------------------------------------------

async def test_model_that_fails_to_load_keeps_healthz_up_and_readyz_503_with_the_reason(make_settings, tmp_path):
    missing = tmp_path / "nope.safetensors"
    async with running(make_settings(model_path=missing)) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert_error(await c.get("/readyz"), 503, "not_ready", str(missing))
        assert_error(await c.post("/search", files=[upload(png(1))]), 503, "not_ready", "nope.safetensors")
        assert_error(await c.get("/index"), 503, "not_ready")
        assert (await c.get("/metrics")).status_code == 200


async def test_index_of_another_model_is_not_ready_with_the_mismatch(make_settings, tmp_path):
    import model
    import torch

    async with running(make_settings()) as c:
        assert (await c.post("/index", files=[upload(png(1))])).status_code == 201
    torch.manual_seed(1)
    net = model.create_model("hybrid1", in_chans=3)
    other = model.save_artifact(tmp_path / "other.safetensors", net,
                                model.ArtifactMeta(name="other", arch="hybrid1", in_chans=3, image_size=32))
    async with running(make_settings(model_path=other)) as c:
        err = assert_error(await c.get("/readyz"), 503, "not_ready")
        assert "other@" in err["message"] or "model" in err["message"]


async def test_requests_before_the_model_is_loaded_get_503(make_settings):
    from app import create_app

    app = create_app(make_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:   # lifespan not run
        assert (await c.get("/healthz")).status_code == 200
        assert_error(await c.get("/readyz"), 503, "not_ready", "loading")
        assert_error(await c.post("/search", files=[upload(png(1))]), 503, "not_ready")


async def test_text_no_answer_could_carry_is_refused_where_it_comes_in_and_answers_keep_working(make_settings):
    # JSON's "\ud800" escape makes a lone surrogate: stored, it made every listing and search that met the
    # item a 500 (its answer could not be encoded), until someone found and deleted it
    lone = '"\\ud800"'
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1))], data={"id": "ok", "metadata": '{"a": 1}'})
        assert r.status_code == 201, r.text
        r = await c.post("/index", files=[upload(png(2))], data={"id": "x", "metadata": '{"a": ' + lone + '}'})
        assert_error(r, 422, "invalid_metadata", "lone surrogate")
        for body in ('{"label": ' + lone + '}', '{"metadata": {"b": [1, ' + lone + ']}}',
                     '{"metadata": {' + lone + ': 1}}'):
            r = await c.patch("/index/ok", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_label", "invalid_metadata"), r.text
        for where in ('{"a": ' + lone + '}', '{"$or": [{"a": 1}, {' + lone + ': 2}]}'):
            assert_error(await c.get("/index", params={"where": where}), 422, "invalid_parameter", "lone surrogate")
        # text shown as other text: a direction override ("rtl\u202egpj.exe" shows as "rtlexe.jpg")
        assert_error(await c.post("/index", files=[upload(png(3))], data={"id": "rtl\u202egpj.exe"}), 422, "invalid_id")
        # a filter nested past any a person writes: a 422, not a 500 from Python's stack
        deep = '{"n":1}'
        for _ in range(370):   # within the 4096 characters a where may have
            deep = '{"$and":[' + deep + ']}'
        assert_error(await c.post("/search?k=1", files=[upload(png(4))], params={"where": deep}), 422,
                     "invalid_parameter", "nested more than 32 deep")
        listing = await c.get("/index")
        assert listing.status_code == 200 and [i["id"] for i in listing.json()["items"]] == ["ok"]
        assert (await c.get("/index/ok")).json()["metadata"] == {"a": 1}
        await still_serving(c)
