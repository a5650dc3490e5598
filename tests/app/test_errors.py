"""Every bad input gets a JSON error with the right status, and the service keeps serving.
In-process (ASGI) with the real model and store; test_server.py repeats the essentials over HTTP."""
from __future__ import annotations

import time

import anyio
import httpx
import pytest

from ..photo_formats import encode_as
from . import crafted
from .conftest import encode, pattern, running
from .test_api import assert_error, png, still_serving, upload

pytestmark = pytest.mark.anyio
KEY = "s3cret-key"


# ---- the image part ------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/search", "/index"])
async def test_bad_image_parts_are_client_errors_and_the_server_keeps_serving(make_settings, route):
    jpeg = encode(pattern(4, (128, 128)), "JPEG")
    cases = [
        ([upload(b"", "empty.png")], 400, "empty_file", "empty.png"),
        ([upload(b"GIF89a... not really", "fake.gif", "image/gif")], 400, "invalid_image", "fake.gif"),
        ([upload(b"just some text\n", "notes.txt", "image/jpeg")], 415, "unsupported_format", "not a JPEG"),
        ([upload(jpeg[: len(jpeg) // 2], "half.jpg", "image/jpeg")], 400, "invalid_image", "truncated"),
        ([upload(crafted.fits(), "x.jpg", "image/jpeg")], 415, "unsupported_format", "FITS"),
        ([upload(crafted.pdf(), "x.png", "image/png")], 415, "unsupported_format", "PDF"),
        ([upload(crafted.eps(), "x.png", "image/png")], 415, "unsupported_format", "EPS"),
        ([upload(encode_as(pattern(2, (400, 300)), "HEIC"), "big.heic")], 413, "image_too_large", "400x300"),
        ([upload(encode_as(pattern(2, (400, 300)), "HEIC")[:300], "cut.heic")], 400, "invalid_image", "cut.heic"),
        ([upload(crafted.tiff(), "x.tif", "image/tiff")], 415, "unsupported_format", "TIFF"),
        ([upload(crafted.png_claiming(10_000, 10_000), "bomb.png")], 413, "image_too_large", "bomb.png"),
        ([upload(crafted.png_claiming(30_000, 30_000), "bomb.png")], 413, "image_too_large", "bomb.png"),
        ([upload(png(1, (300, 300)), "big.png")], 413, "image_too_large", "300x300"),
    ]
    async with running(make_settings(max_pixels=50_000)) as c:
        for files, status, code, word in cases:
            r = await c.post(route, files=files)
            assert_error(r, status, code, word)
        await still_serving(c)
        assert (await c.get("/index")).json()["count"] == 0    # nothing bad was stored


async def test_content_type_of_the_part_is_ignored_the_bytes_decide(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1), "photo.pdf", "application/pdf")], data={"id": "a"})
        assert r.status_code == 201
        r = await c.post("/search?k=1", files=[upload(png(1), "x.bin", "application/octet-stream")])
        assert r.json()["results"][0]["id"] == "a"


async def test_one_bad_file_among_many_rejects_the_request_and_names_it(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1), "ok.png"), upload(b"nope", "bad.png")])
        assert_error(r, 415, "unsupported_format", "file 1", "bad.png")
        assert (await c.get("/index")).json()["count"] == 0


async def test_missing_file_part_is_400(make_settings):
    async with running(make_settings()) as c:
        assert_error(await c.post("/index", files={"label": (None, "x")}), 400, "missing_file", "no `file` part")
        assert_error(await c.post("/index", data={"label": "x"}), 400, "missing_file", "multipart/form-data")
        empty_multipart = {"content-type": "multipart/form-data; boundary=b"}
        assert_error(await c.post("/search", content=b"--b--\r\n", headers=empty_multipart), 400, "missing_file")
        assert_error(await c.post("/search", files={"file": (None, b"not a file upload")}), 400, "missing_file",
                     "plain field")
        await still_serving(c)


async def test_non_multipart_bodies_are_415_except_a_raw_image_or_a_vector_on_search(make_settings):
    async with running(make_settings()) as c:
        assert_error(await c.post("/index", content=png(1), headers={"content-type": "image/png"}),
                     415, "unsupported_media_type", "image/png")
        assert_error(await c.post("/index", content=b"x", headers={"content-type": "text/plain"}), 415,
                     "unsupported_media_type", "text/plain", "vectors, as an application/json body")
        assert_error(await c.post("/index", json={"file": "x"}), 422, "invalid_vector", '{"items": [')
        assert_error(await c.post("/search", content=b"x", headers={"content-type": "text/plain"}), 415,
                     "unsupported_media_type", "text/plain", "the image itself as the body", "a vector")
        assert_error(await c.post("/search", json={"file": "x"}), 422, "invalid_vector", '{"vector": [...]}')
        assert_error(await c.post("/search"), 415, "unsupported_media_type", "none")


async def test_bad_raw_image_bodies_on_search_are_client_errors_naming_the_body(make_settings):
    raw = {"content-type": "application/octet-stream"}
    async with running(make_settings(max_pixels=50_000)) as c:
        assert_error(await c.post("/search", content=b"", headers=raw), 400, "empty_file", "the body")
        assert_error(await c.post("/search", content=crafted.pdf(), headers={"content-type": "image/png"}),
                     415, "unsupported_format", "PDF")
        jpeg = encode(pattern(4, (128, 128)), "JPEG")
        assert_error(await c.post("/search", content=jpeg[: len(jpeg) // 2], headers=raw),
                     400, "invalid_image", "truncated")
        assert_error(await c.post("/search", content=png(1, (300, 300)), headers=raw), 413, "image_too_large")
        await still_serving(c)


async def test_a_bad_image_fails_only_its_own_request_when_batched_with_good_ones(make_settings):
    async with running(make_settings(batch_max_wait_ms=200, batch_max_size=32)) as c:
        await c.post("/index", files=[upload(png(i)) for i in range(2)], data={"id": ["a", "b"]})
        statuses = {}

        async def one(i):
            data = png(i % 2) if i % 3 else b"GIF89a... not really"
            r = await c.post("/search?k=1", files=[upload(data)])
            statuses[i] = (r.status_code, r.json()["results"][0]["id"] if r.status_code == 200 else r.json())

        async with anyio.create_task_group() as tg:
            for i in range(9):
                tg.start_soon(one, i)
        for i, (status, body) in statuses.items():
            if i % 3:
                assert (status, body) == (200, "ab"[i % 2]), (i, status, body)
            else:
                assert status == 400 and body["error"]["code"] == "invalid_image", (i, body)


async def test_malformed_multipart_is_400(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/search", content=b"garbage", headers={"content-type": "multipart/form-data"})
        assert_error(r, 400, "malformed_multipart", "boundary")
        await still_serving(c)


async def test_unknown_and_misplaced_fields_are_422(make_settings):
    async with running(make_settings()) as c:
        assert_error(await c.post("/search", files=[upload(png(1))], data={"label": "x"}), 422, "unknown_field",
                     "'label'")
        assert_error(await c.post("/index", files=[("image", ("a.png", png(1)))]), 422, "unknown_field", "'image'")


async def test_a_text_field_that_is_not_utf8_is_422_naming_it_and_nothing_is_stored(make_settings):
    """Starlette reads such a field as Latin-1: a label sent in Windows-1252 was stored as other characters."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png(1) + b"\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"label\"\r\n\r\ncaf\xe9\r\n--b--\r\n")
    async with running(make_settings()) as c:
        r = await c.post("/index", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(r, 422, "invalid_field", "form field 'label' is not UTF-8 text (byte 3 is 0xe9)")
        assert (await c.get("/index")).json()["count"] == 0
        utf8 = body.replace(b"caf\xe9", "café".encode())
        r = await c.post("/index", content=utf8, headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 201 and (await c.get("/index")).json()["items"][0]["label"] == "café"
        await still_serving(c)


# ---- parameters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("query,word", [("k=0", "k"), ("k=1001", "k"), ("k=ten", "k"), ("k=-3", "k"),
                                        ("max_distance=-1", "max_distance"), ("max_distance=nan", "max_distance"),
                                        ("max_distance=abc", "max_distance")])
async def test_out_of_range_query_parameters_are_422_naming_the_value(make_settings, query, word):
    async with running(make_settings()) as c:
        err = assert_error(await c.post(f"/search?{query}", files=[upload(png(1))]), 422, "invalid_parameter", word)
        assert repr(query.split("=")[1]) in err["message"]
        await still_serving(c)


@pytest.mark.parametrize("metadata,word", [
    ("{not json", "not valid JSON"), ('["a", "list"]', "must be a JSON object, got list"),
    ('"text"', "got str"), ('{"x": NaN}', "NaN"), ("", "not valid JSON"),
    ('{"x": 1e999}', "metadata part 0 is not JSON-serialisable"),
    ('{"x": "' + "a" * 70_000 + '"}', "metadata part 0 is 70008 bytes of JSON, more than 65536")])
async def test_malformed_metadata_is_422_and_a_gallery_it_would_have_made_is_not_made(make_settings, metadata, word):
    async with running(make_settings(max_field_bytes=100_000)) as c:
        r = await c.post("/index", files=[upload(png(1))], data={"metadata": metadata})
        assert_error(r, 422, "invalid_metadata", word)
        assert (await c.get("/index")).json()["count"] == 0
        r = await c.post("/index?gallery=ghost", files=[upload(png(1))], data={"metadata": metadata})
        assert_error(r, 422, "invalid_metadata", word)
        assert "ghost" not in [g["name"] for g in (await c.get("/galleries")).json()["galleries"]]


@pytest.mark.parametrize("data,code,word", [
    ({"id": ["a", "b", "c"]}, "invalid_id", "3 `id` parts for 2 files"),
    ({"id": ["a", "a"]}, "invalid_id", "twice"),
    ({"id": ["ok", "a/thumbnail"]}, "invalid_id", "'/thumbnail'"),
    ({"id": ["ok", " padded"]}, "invalid_id", "padded"),
    ({"id": ["ok", "x" * 1025]}, "invalid_id", "1-1024"),
    ({"id": ["ok", "photos/../cat.jpg"]}, "invalid_id", "no '.' or '..' between slashes"),   # unreachable by URL
    ({"id": ["./cat.jpg", "ok"]}, "invalid_id", "'./cat.jpg' is not valid"),
    ({"label": ["a", "b", "c"]}, "invalid_label", "3 `label` parts"),
    ({"label": "bad\x01label"}, "invalid_label", "control"),
    ({"label": "next\x85line"}, "invalid_label", "control"), ({"id": ["ok", "a\u2028b"]}, "invalid_id", "control"),
    ({"id": ["ok", "del\x7f"]}, "invalid_id", "control"), ({"label": "del\x7f"}, "invalid_label", "control"),
    ({"metadata": ['{"a": 1}', '{"b": 2}', '{}']}, "invalid_metadata", "3 `metadata` parts"),
])
async def test_ids_labels_and_metadata_that_do_not_fit_the_files_are_422(make_settings, data, code, word):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1)), upload(png(2))], data=data)
        assert_error(r, 422, code, word)


async def test_dots_inside_an_id_are_kept_and_the_item_is_reached_by_its_url(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1))], data={"id": "photos.2024/..cat..jpg/.x"})
        assert r.status_code == 201, r.text
        assert (await c.get("/index/photos.2024/..cat..jpg/.x")).json()["id"] == "photos.2024/..cat..jpg/.x"
        assert (await c.delete("/index/photos.2024/..cat..jpg/.x")).status_code == 204


async def test_too_many_labels_for_one_file_is_422_asking_for_one(make_settings):
    async with running(make_settings()) as c:
        r = await c.post("/index", files=[upload(png(1))], data={"label": ["a", "b"]})
        assert_error(r, 422, "invalid_label", "got 2 `label` parts for 1 files; send 1 (or none)")


# ---- limits --------------------------------------------------------------------------------------

async def test_body_over_the_limit_is_413_from_content_length(make_settings):
    async with running(make_settings(max_body_bytes=20_000)) as c:
        big = encode(pattern(1, (400, 400)), "PNG", compress_level=0)
        assert len(big) > 20_000
        assert_error(await c.post("/search", files=[upload(big)]), 413, "body_too_large", "20000")
        await still_serving(c)


async def test_chunked_body_without_content_length_is_cut_at_the_limit(make_settings):
    pulled = 0
    chunk = b"x" * 8192

    async def endless():
        nonlocal pulled
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(10_000):          # 80 MB if nobody stops reading
            pulled += 1
            yield chunk

    async with running(make_settings(max_body_bytes=100_000)) as c:
        r = await c.post("/search", content=endless(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "body_too_large", "100000")
        assert pulled * len(chunk) <= 100_000 + len(chunk)     # stopped reading at the limit
        await still_serving(c)


async def test_number_of_parts_and_size_of_fields_are_bounded(make_settings):
    async with running(make_settings(max_files_per_request=3, max_fields_per_request=4, max_field_bytes=100)) as c:
        r = await c.post("/index", files=[upload(png(i)) for i in range(4)])
        assert_error(r, 413, "too_many_parts", "3 `file`")
        r = await c.post("/index", files=[upload(png(1))], data={"label": ["a"] * 5})
        assert_error(r, 413, "too_many_parts", "4 non-file")
        r = await c.post("/index", files=[upload(png(1))], data={"metadata": '{"a": "' + "x" * 200 + '"}'})
        assert_error(r, 413, "field_too_large", "100 bytes")
        assert (await c.post("/index", files=[upload(png(i)) for i in range(3)])).status_code == 201
        await still_serving(c)


# ---- the API key ---------------------------------------------------------------------------------

async def test_writes_need_the_key_reads_do_not(make_settings):
    async with running(make_settings(api_key=KEY)) as c:
        r = await c.post("/index", files=[upload(png(1))])
        assert_error(r, 401, "missing_api_key", "X-API-Key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(await c.post("/index", files=[upload(png(1))], headers={"X-API-Key": "wrong"}),
                     403, "invalid_api_key")
        assert_error(await c.post("/index", files=[upload(png(1))], headers={"Authorization": "Bearer " + KEY[:-1]}),
                     403, "invalid_api_key")
        assert_error(await c.delete("/index/a"), 401, "missing_api_key")
        r = await c.post("/index", files=[upload(png(1))], data={"id": "a"}, headers={"X-API-Key": KEY})
        assert r.status_code == 201
        r = await c.post("/index", files=[upload(png(2))], data={"id": "b"}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 201
        assert (await c.post("/search", files=[upload(png(1))])).status_code == 200
        assert (await c.get("/index/a")).status_code == 200
        assert (await c.delete("/index/a", headers={"X-API-Key": KEY})).status_code == 204


async def test_several_keys_are_each_accepted_and_counted_in_buckets_of_their_own(make_settings):
    async with running(make_settings(api_key=" first-key, second-key ", rate_limit_per_minute=2)) as c:
        for key in ("first-key", "second-key"):  # two requests each: each key has its own bucket
            for _ in range(2):
                assert (await c.delete("/index/absent", headers={"X-API-Key": key})).status_code == 404
        assert_error(await c.delete("/index/absent", headers={"X-API-Key": "first-key"}), 429, "rate_limited")
        assert_error(await c.delete("/index/absent", headers={"X-API-Key": "first-key,second-key"}),
                     403, "invalid_api_key")


async def test_reads_need_the_key_when_configured_but_probes_and_page_do_not(make_settings):
    async with running(make_settings(api_key=KEY, require_key_for_reads=True)) as c:
        assert_error(await c.post("/search", files=[upload(png(1))]), 401, "missing_api_key")
        assert_error(await c.get("/index"), 401, "missing_api_key")
        assert_error(await c.get("/index", headers={"X-API-Key": "nope"}), 403, "invalid_api_key")
        assert (await c.get("/index", headers={"X-API-Key": KEY})).status_code == 200
        for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path
        # /metrics names every gallery and its size: it takes the key as reads do (tests/app/test_metrics_access.py)
        assert_error(await c.get("/metrics"), 401, "missing_api_key")
        assert (await c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200


async def test_the_key_is_checked_before_the_body_is_read(make_settings):
    pulled = 0

    async def body():
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"y" * 65536

    async with running(make_settings(api_key=KEY, max_body_bytes=10**9)) as c:
        for headers, status in [({}, 401), ({"X-API-Key": "wrong"}, 403)]:
            t0 = time.perf_counter()
            r = await c.post("/index", content=body(), headers={**headers, "content-type": "multipart/form-data; boundary=b"})
            assert r.status_code == status
            assert time.perf_counter() - t0 < 5.0   # not after a 64 MB body
        assert pulled == 0       # not one body chunk was read


# ---- rate limit and concurrency cap --------------------------------------------------------------

async def test_rate_limit_answers_429_with_retry_after_per_key(make_settings):
    async with running(make_settings(api_key=KEY, rate_limit_per_minute=3)) as c:
        for _ in range(3):
            assert (await c.get("/index")).status_code == 200
        r = await c.get("/index")
        err = assert_error(r, 429, "rate_limited", "3 requests a minute")
        assert int(r.headers["retry-after"]) >= 1 and "retry in" in err["message"]
        # the key holder has a bucket of its own, and probes are never limited
        assert (await c.get("/index", headers={"X-API-Key": KEY})).status_code == 200
        assert (await c.get("/healthz")).status_code == 200 and (await c.get("/metrics")).status_code == 200


async def test_past_the_concurrency_cap_503_at_once_while_healthz_answers(make_settings):
    release = anyio.Event()

    async def slow_body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        await release.wait()
        yield b"not an image\r\n--b--\r\n"

    async with running(make_settings(max_concurrency=2)) as c:
        statuses = []

        async def held():
            r = await c.post("/search", content=slow_body(), headers={"content-type": "multipart/form-data; boundary=b"})
            statuses.append(r.status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            tg.start_soon(held)
            await anyio.sleep(0.2)
            t0 = time.perf_counter()
            r = await c.post("/search", files=[upload(png(1))])
            assert_error(r, 503, "overloaded", "2 requests in flight")
            assert r.headers["retry-after"] == "1"
            assert time.perf_counter() - t0 < 5.0   # at once, not after the held requests
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
            release.set()
        assert statuses == [415, 415]
        await still_serving(c)


async def test_unknown_routes_and_methods_are_json(make_settings):
    async with running(make_settings()) as c:
        assert_error(await c.get("/nope"), 404, "not_found", "/nope")
        assert_error(await c.put("/search"), 405, "method_not_allowed", "PUT")


async def test_an_id_with_a_line_break_in_the_url_is_an_invalid_id_not_no_route(make_settings):
    # the routes' {id:path} does not match a line feed, so without this it read "no route for GET /index/..."
    async with running(make_settings()) as c:
        for method, url in (("GET", "/index/foo%0D%0Abar"), ("DELETE", "/index/a%0Ab"), ("POST", "/search/x%0Ay"),
                            ("GET", "/index/foo%0Abar/thumbnail")):
            assert_error(await c.request(method, url), 422, "invalid_id", "control characters")
        assert_error(await c.get("/nope%0Athere"), 404, "not_found", "no route")
        await still_serving(c)


async def test_an_unexpected_error_is_a_json_500_naming_the_request_id_and_logged_with_it(caplog):
    """What no route handles is answered by the outermost middleware while the request's id is still
    known: the JSON error shape, the id in the body and the header, the traceback in the log."""
    from app._middleware import RequestIdMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("the disk went away")

    transport = httpx.ASGITransport(app=RequestIdMiddleware(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
        with caplog.at_level("ERROR", logger="simsearch.app"):
            r = await c.post("/index", headers={"X-Request-ID": "trace-500"})
    assert_error(r, 500, "internal_error", "RuntimeError", "server log")
    assert r.headers["x-request-id"] == r.json()["error"]["request_id"] == "trace-500"
    assert "the disk went away" not in r.text  # internals stay in the log
    record = next(rec for rec in caplog.records if "unhandled error" in rec.getMessage())
    assert "POST /index (request trace-500)" in record.getMessage() and record.exc_info[1].args == ("the disk went away",)


async def test_a_validation_message_repeats_at_most_200_characters_of_the_invalid_value(make_settings):
    """A 29 KB `where` (over its 4096-character limit) got a 29 KB error repeating all of it: now the
    first 200 characters, an ellipsis and the length."""
    where = '{"a": "' + "x" * 29_000 + '"}'
    async with running(make_settings()) as c:
        r = await c.get("/index", params={"where": where})
        err = assert_error(r, 422, "invalid_parameter", "where", "at most 4096 characters",
                           f"... ({len(where)} characters)")
        assert len(r.content) < 800 and repr(where)[:200] in err["message"]
        # a short invalid value is still repeated whole
        err = assert_error(await c.post("/search?k=ten", files=[upload(png(1))]), 422, "invalid_parameter")
        assert "(got 'ten')" in err["message"]
