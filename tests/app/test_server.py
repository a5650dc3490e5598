"""A real `simsearch serve` process over real HTTP (and raw sockets where the point is what a client
sends before the server answers)."""
from __future__ import annotations

import io
import json
import os
import select
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ..photo_formats import PHONE_FORMATS, SUFFIX, encode_as, phone_sized
from . import crafted
from .conftest import SERVER_MAX_BODY, SERVER_MAX_CONCURRENCY, encode, pattern
from .test_api import assert_error, png, upload


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def writer(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": server.key}) as c:
        yield c


def assert_alive(server, client) -> None:
    assert server.alive(), server.log_tail()
    assert client.post("/search?k=1", files=[upload(png(99))]).status_code == 200


def raw_request(server, head: str, body: bytes = b"") -> socket.socket:
    s = socket.create_connection((server.host, server.port), timeout=10)
    s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return s


def read_response(s: socket.socket, timeout: float = 10) -> tuple[int, dict, bytes]:
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = s.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        part = s.recv(65536)
        if not part:
            break
        body += part
    return int(lines[0].split()[1]), headers, body


def test_index_search_get_list_delete_over_http(server, client, writer, cifar):
    planes = cifar["airplane"]
    r = writer.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(planes[:4])],
                    data={"id": [f"http-{i}" for i in range(4)], "label": "airplane",
                          "metadata": json.dumps({"source": "cifar10"})})
    assert r.status_code == 201, r.text
    assert r.json()["ids"] == [f"http-{i}" for i in range(4)]
    hit = client.post("/search?k=2", files=[upload(planes[2], "q.jpg", "image/jpeg")]).json()["results"][0]
    assert hit["id"] == "http-2" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert hit["metadata"] == {"source": "cifar10"} and hit["label"] == "airplane"
    assert client.get("/index/http-1").json()["label"] == "airplane"
    listing = client.get("/index?limit=100").json()
    assert {f"http-{i}" for i in range(4)} <= {i["id"] for i in listing["items"]}
    thumb = client.get("/index/http-0/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    neighbours = client.post("/search/http-0?k=3").json()["results"]
    assert len(neighbours) == 3 and "http-0" not in {h["id"] for h in neighbours}
    assert writer.delete("/index/http-3").status_code == 204
    assert_error(client.get("/index/http-3"), 404, "not_found", "http-3")
    metrics = client.get("/metrics").text
    assert 'simsearch_requests_total{method="POST",route="/index",status="201"}' in metrics


def test_photos_as_phones_write_them_are_indexed_and_found_over_http(server, client, writer, cifar):
    """MPO, HEIC and AVIF copies of one photo are found first by the same photo as a JPEG, among JPEGs of
    other photos; a HEIC query works as a raw body too, and a HEIC item has a JPEG thumbnail."""
    photos = [phone_sized(Image.open(io.BytesIO(b))) for b in cifar["automobile"][:5]]
    files = [upload(encode_as(photos[0], f), f"car{SUFFIX[f]}", "application/octet-stream") for f in PHONE_FORMATS]
    files += [upload(encode_as(p, "JPEG"), f"other-{i}.jpg", "image/jpeg") for i, p in enumerate(photos[1:])]
    ids = [f"phone-{f}" for f in PHONE_FORMATS] + [f"phone-other-{i}" for i in range(4)]
    r = writer.post("/index", files=files, data={"id": ids, "label": "phone-test"})
    assert r.status_code == 201, r.text
    query = encode_as(photos[0], "JPEG")
    hits = client.post("/search?k=3&label=phone-test", files=[upload(query, "q.jpg", "image/jpeg")]).json()["results"]
    assert {h["id"] for h in hits} == {f"phone-{f}" for f in PHONE_FORMATS}
    assert min(h["score"] for h in hits) > 0.99
    raw = client.post("/search?k=1&label=phone-test", content=encode_as(photos[0], "HEIC"),
                      headers={"Content-Type": "image/heic"})
    assert raw.status_code == 200 and raw.json()["results"][0]["id"] in {f"phone-{f}" for f in PHONE_FORMATS}
    thumb = client.get("/index/phone-HEIC/thumbnail")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    assert_alive(server, client)


def test_embed_search_by_vector_filters_patch_and_delete_by_filter_over_http(server, client, writer, cifar):
    ships = cifar["airplane"][5:8]
    r = writer.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(ships)],
                    data={"id": ["where-0", "where-1", "where-2"],
                          "metadata": ['{"trip": "oslo"}', '{"trip": "rome"}', '{"trip": "oslo"}']})
    assert r.status_code == 201, r.text
    r = client.post("/embed", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(ships)])
    vectors = r.json()["vectors"]
    assert r.status_code == 200 and len(vectors) == 3 and all(len(v) == r.json()["dimension"] for v in vectors)
    hits = client.post("/search", params={"k": 5, "where": '{"trip": "oslo"}'},
                       files=[upload(ships[1], "q.jpg", "image/jpeg")]).json()["results"]
    assert sorted(h["id"] for h in hits) == ["where-0", "where-2"]
    by_vector = client.post("/search", params={"k": 1, "where": '{"trip": {"$ne": "oslo"}}'},
                            json={"vector": vectors[1]}).json()["results"]
    assert [h["id"] for h in by_vector] == ["where-1"] and by_vector[0]["score"] > 0.999
    r = writer.delete("/index", params={"where": '{"trip": {"$in": ["rome", "paris"]}}'})
    assert r.status_code == 200 and r.json() == {"deleted": 1}, r.text
    assert client.get("/index/where-1").status_code == 404 and client.get("/index/where-0").status_code == 200
    r = writer.patch("/index/where-0", json={"metadata": {"trip": "rome", "day": 3}})
    assert r.status_code == 200 and r.json()["metadata"] == {"trip": "rome", "day": 3}, r.text
    hits = client.post("/search", params={"k": 5, "where": '{"trip": "oslo"}'},
                       files=[upload(ships[1], "q.jpg", "image/jpeg")]).json()["results"]
    assert [h["id"] for h in hits] == ["where-2"]
    assert 'route="/embed",status="200"' in client.get("/metrics").text
    assert_alive(server, client)


def test_batch_search_over_http_answers_every_query_of_one_request(server, client, writer, cifar):
    cars = cifar["automobile"][4:8]
    ids = [f"batch-car-{i}" for i in range(4)]
    r = writer.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(cars)],
                    data={"id": ids, "metadata": '{"set": "batch"}'})
    assert r.status_code == 201, r.text
    r = client.post("/batch/search", params={"k": 2, "where": '{"set": "batch"}'},
                    files=[upload(b, f"q{i}.jpg", "image/jpeg") for i, b in reversed(list(enumerate(cars)))])
    assert r.status_code == 200, r.text
    queries = r.json()["queries"]
    assert [q["name"] for q in queries] == ["q3.jpg", "q2.jpg", "q1.jpg", "q0.jpg"]
    assert [q["results"][0]["id"] for q in queries] == ids[::-1]
    assert all(len(q["results"]) == 2 and q["results"][0]["score"] > 0.999 for q in queries)
    assert 'route="/batch/search",status="200"' in client.get("/metrics").text
    assert_alive(server, client)


@pytest.mark.parametrize("files,status,code", [
    ([upload(b"", "e.png")], 400, "empty_file"),
    ([upload(b"%PDF-1.4 not an image", "x.png")], 415, "unsupported_format"),
    ([upload(crafted.fits(), "x.jpg", "image/jpeg")], 415, "unsupported_format"),
    ([upload(crafted.png_claiming(20_000, 20_000), "bomb.png")], 413, "image_too_large"),
    ([upload(encode(pattern(1, (200, 200)), "JPEG")[:900], "cut.jpg")], 400, "invalid_image"),
])
def test_bad_images_over_http_are_client_errors_and_the_server_keeps_serving(server, client, files, status, code):
    assert_error(client.post("/search", files=files), status, code)
    assert_alive(server, client)


def test_a_query_parameter_an_endpoint_does_not_take_is_422_naming_it_over_http(server, client):
    """A misspelt or misplaced parameter would otherwise be ignored and the answer look right."""
    r = assert_error(client.post("/search?k=3&lable=cat", files=[upload(png(1))]), 422, "invalid_parameter",
                     "POST /search takes no query parameter 'lable'; it takes: ")
    assert "label" in r["message"] and "max_distance" in r["message"]
    assert_error(client.post("/search/no-such-id?crop=0,0,1,1&combine=best"), 422, "invalid_parameter",
                 "POST /search/{id} takes no query parameter 'combine', 'crop'")
    assert_error(client.post("/classify?offset=10", files=[upload(png(1))]), 422, "invalid_parameter", "'offset'")
    assert client.get("/?gallery=default&utm_source=mail").status_code == 200   # the page's address is its own
    assert client.post("/search?k=3&label=cat", files=[upload(png(1))]).status_code == 200
    # probes answer HEAD as load balancers send it: the status, no body
    for path in ("/healthz", "/readyz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert_alive(server, client)


def test_k_out_of_range_and_unknown_id_over_http(server, client):
    assert_error(client.post("/search?k=5000", files=[upload(png(1))]), 422, "invalid_parameter", "k")
    assert_error(client.post("/search/no-such-id"), 404, "not_found", "no-such-id")
    assert_error(client.delete("/index/no-such-id", headers={"X-API-Key": server.key}), 404, "not_found")
    assert_alive(server, client)


def test_writes_without_a_key_are_401_and_with_a_wrong_one_403_and_the_server_serves_on(server, client):
    assert_error(client.post("/index", files=[upload(png(1))]), 401, "missing_api_key")
    assert_error(client.post("/index", files=[upload(png(1))], headers={"Authorization": "Bearer nope"}),
                 403, "invalid_api_key")
    assert_error(client.delete("/index", params={"where": '{"trip": "oslo"}'}), 401, "missing_api_key")
    assert_error(client.patch("/index/x", json={"label": "y"}), 401, "missing_api_key")
    assert_alive(server, client)


def test_huge_body_with_wrong_key_is_refused_before_it_is_sent(server, client):
    # Headers announcing 500 MB, then nothing: the answer must come without the body.
    s = raw_request(server, f"POST /index HTTP/1.1\nHost: x\nX-API-Key: wrong\nContent-Length: {500 * 2**20}\n"
                            "Content-Type: multipart/form-data; boundary=b\n")
    t0 = time.perf_counter()
    status, headers, body = read_response(s, timeout=5)
    s.close()
    assert status == 403 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert time.perf_counter() - t0 < 5
    assert_alive(server, client)


def test_content_length_over_the_limit_is_413_before_the_body(server, client):
    s = raw_request(server, f"POST /search HTTP/1.1\nHost: x\nContent-Length: {SERVER_MAX_BODY + 1}\n"
                            "Content-Type: multipart/form-data; boundary=b\n")
    status, _, body = read_response(s, timeout=5)
    s.close()
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert str(SERVER_MAX_BODY) in json.loads(body)["error"]["message"]
    assert_alive(server, client)


def test_chunked_body_is_cut_at_the_limit_before_it_is_all_sent(server, client):
    s = raw_request(server, "POST /search HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
                            "Content-Type: multipart/form-data; boundary=b\n")
    start = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    s.sendall(b"%x\r\n" % len(start) + start + b"\r\n")
    chunk = b"z" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    planned, sent = 40 * SERVER_MAX_BODY, 0
    answered = False
    try:
        while sent < planned:
            if select.select([s], [], [], 0)[0]:   # the server has answered: stop sending
                answered = True
                break
            s.sendall(frame)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        answered = True
    assert answered and sent < planned, f"sent all {sent} bytes without an answer"
    status, _, body = read_response(s, timeout=10)
    s.close()
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert_alive(server, client)


def test_past_the_concurrency_cap_503_at_once_while_healthz_answers(server, client):
    # Hold SERVER_MAX_CONCURRENCY requests open by sending only part of their bodies.
    held = [raw_request(server, "POST /search HTTP/1.1\nHost: x\nContent-Length: 1000\n"
                                "Content-Type: multipart/form-data; boundary=b\n", b"--b\r\n")
            for _ in range(SERVER_MAX_CONCURRENCY)]
    try:
        deadline = time.monotonic() + 10
        while True:   # until all the held requests have reached the app
            t0 = time.perf_counter()
            r = client.post("/search", files=[upload(png(1))])
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert_error(r, 503, "overloaded", f"{SERVER_MAX_CONCURRENCY} requests in flight")
        assert time.perf_counter() - t0 < 5
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while client.post("/search", files=[upload(png(1))]).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_alive(server, client)


def test_serve_rejects_more_than_one_worker_unless_the_galleries_are_in_a_milvus_server(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "simsearch"
    r = subprocess.run([str(exe), "serve", "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--workers 2" in r.stderr and "one process owns an index" in r.stderr
    r = subprocess.run([str(exe), "serve", "--workers", "2", "--milvus-uri", str(tmp_path / "g.db")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "a Milvus Lite file is opened by one process" in r.stderr, r.stderr
    r = subprocess.run([str(exe), "serve", "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--workers 0" in r.stderr
    import os   # SIMSEARCH_WORKERS is the default of --workers, checked the same way
    r = subprocess.run([str(exe), "serve"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SIMSEARCH_WORKERS": "3"})
    assert r.returncode == 2 and "--workers 3" in r.stderr and "one process owns an index" in r.stderr, r.stderr
    r = subprocess.run([str(exe), "serve"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SIMSEARCH_WORKERS": "many"})
    assert r.returncode == 2 and "invalid int value: 'many'" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("name, value, words", [
    ("SIMSEARCH_MAX_BODY_BYTES", "lots", ["'lots'"]),
    ("SIMSEARCH_IMAGE_FORMATS", "jpeg,tiff", ["'tiff' is none of them"]),
    ("SIMSEARCH_CORS_ORIGINS", "photos.example.com", ["'photos.example.com' is not an origin"]),
    ("SIMSEARCH_RUNTIME", "tensorrt", ["give one of torch, onnx", "'tensorrt'"]),
    ("SIMSEARCH_WORKERS_DIR", "/nowhere/shared", ["/nowhere/shared is not a folder"])])
def test_serve_reports_a_bad_setting_in_one_line(tmp_path, name, value, words):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "simsearch"
    r = subprocess.run([str(exe), "serve"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, name: value}, cwd=tmp_path)
    assert r.returncode == 2 and name in r.stderr and all(w in r.stderr for w in words)
    assert "Traceback" not in r.stderr


def test_an_operator_can_narrow_the_upload_formats_and_the_rest_get_415(hybrid1_artifact, cifar, tmp_path):
    """SIMSEARCH_IMAGE_FORMATS=jpeg,png: a HEIC or AVIF upload is refused before any decoder sees it,
    JPEG and PNG work, and the server keeps serving."""
    from .conftest import start_server, stop_server

    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_IMAGE_FORMATS": "JPG, png", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"},
                        tmp_path, ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            photo = phone_sized(Image.open(io.BytesIO(cifar["automobile"][0])))
            for fmt, said in (("HEIC", "a HEIC"), ("AVIF", "an AVIF")):
                r = c.post("/index", files=[upload(encode_as(photo, fmt), f"x{SUFFIX[fmt]}", "image/heic")])
                assert_error(r, 415, "unsupported_format", f"is {said} file; send a JPEG or PNG image")
            r = c.post("/index", files=[upload(encode_as(photo, "JPEG"), "x.jpg", "image/jpeg")], data={"id": "ok"})
            assert r.status_code == 201, r.text
            hit = c.post("/search?k=1", files=[upload(encode(photo, "PNG"), "q.png", "image/png")]).json()
            assert hit["results"][0]["id"] == "ok"
            assert c.get("/index").json()["count"] == 1
        assert "uploads as JPEG, PNG, MPO" in live.log_tail(20_000)
    finally:
        stop_server(live)


def test_filter_keys_are_indexed_before_ready_and_kept_current(hybrid1_artifact, cifar, tmp_path):
    """SIMSEARCH_FILTER_KEYS: the keys' indexes are built while the service loads (logged), cover the
    items already stored, and follow later writes, also for a key no item had."""
    from cli import main

    from .conftest import start_server, stop_server

    folder = tmp_path / "photos" / "cars"
    folder.mkdir(parents=True)
    for i, data in enumerate(cifar["automobile"][:3]):
        (folder / f"{i}.jpg").write_bytes(data)
    assert main(["index", "build", str(tmp_path / "photos"), "--model", str(hybrid1_artifact),
                 "--data", str(tmp_path / "data")]) == 0  # records {"width": 32, "height": 32}
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_FILTER_KEYS": " width, trip ,width", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"},
                        tmp_path, ["--log-level", "info"])
    try:
        assert "metadata keys indexed for filters" in live.log_tail(20_000)
        assert "width (1 values), trip (0 values)" in live.log_tail(20_000)
        with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": live.key}) as c:
            query = [upload(cifar["automobile"][0], "q.jpg", "image/jpeg")]
            hits = c.post("/search", params={"k": 5, "where": '{"width": {"$gte": 32}}'}, files=query).json()
            assert sorted(h["id"] for h in hits["results"]) == ["cars/0.jpg", "cars/1.jpg", "cars/2.jpg"]
            r = c.post("/index", files=[upload(cifar["automobile"][3], "x.jpg", "image/jpeg")],
                       data={"id": "new", "metadata": '{"trip": "oslo"}'})
            assert r.status_code == 201, r.text
            hits = c.post("/search", params={"k": 5, "where": '{"trip": "oslo"}'}, files=query).json()
            assert [h["id"] for h in hits["results"]] == ["new"]
    finally:
        stop_server(live)


def test_a_gallery_of_another_models_vectors_is_not_served_and_the_model_to_serve_it_with_is_named(
        hybrid1_artifact, cifar, tmp_path):
    import model
    from cli import main

    from .conftest import start_server, stop_server

    folder = tmp_path / "photos" / "cars"
    folder.mkdir(parents=True)
    (folder / "0.jpg").write_bytes(cifar["automobile"][0])
    mnist = model.default_artifact_path("mnist")
    for data, made_with, says in ((tmp_path / "bundled", mnist, f"serve it with SIMSEARCH_MODEL_PATH={mnist}"),
                                  (tmp_path / "own", hybrid1_artifact, "serve it with that model's artifact")):
        assert main(["index", "build", str(tmp_path / "photos"), "--model", str(made_with), "--data", str(data)]) == 0
        live = start_server({"SIMSEARCH_DATA_DIR": str(data), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path,
                            ready=False, log_name=f"{data.name}.log")   # the default model, not the gallery's
        try:
            r = httpx.get(live.url + "/readyz", timeout=10)
            assert r.status_code == 503
            message = r.json()["error"]["message"]
            assert f"holds vectors of model '{model.Embedder.from_file(made_with).model_id}'" in message, message
            assert says in message, message
            assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200
        finally:
            stop_server(live)


def test_a_gallery_of_an_earlier_bundled_model_is_told_the_commit_that_gives_the_file_back_and_serves_with_it(
        cifar, tmp_path):
    """An operator whose gallery was made with a default model since replaced: /readyz names the `git show`
    that writes the file back, and the service serves the gallery with the file that command writes."""
    import shlex
    import subprocess

    import model
    from cli import main

    from .conftest import start_server, stop_server

    root = Path(__file__).resolve().parents[2]
    shipped = subprocess.run(["git", "-C", str(root), "show", "6e453df:model/weights/hybrid1-cifar10.safetensors"],
                             capture_output=True)
    if shipped.returncode != 0:
        pytest.skip("needs a full git clone of simsearch (the file of commit 6e453df)")
    old = tmp_path / "shipped.safetensors"
    old.write_bytes(shipped.stdout)
    (tmp_path / "photos" / "cars").mkdir(parents=True)
    (tmp_path / "photos" / "cars" / "0.jpg").write_bytes(cifar["automobile"][0])
    data = tmp_path / "data"
    assert main(["index", "build", str(tmp_path / "photos"), "--model", str(old), "--data", str(data)]) == 0
    env = {"SIMSEARCH_DATA_DIR": str(data), "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}
    live = start_server(env, tmp_path, ready=False, log_name="default.log")   # today's default model
    try:
        r = httpx.get(live.url + "/readyz", timeout=10)
        assert r.status_code == 503
        message = r.json()["error"]["message"]
    finally:
        stop_server(live)
    assert f"'{model.Embedder.from_file(old).model_id}'" in message, message
    assert "shipped in commit 6e453df (2026-11-30) and replaced since" in message, message
    command = message.split("in a clone of simsearch, `")[1].split("`")[0]
    subprocess.run(command, shell=True, cwd=tmp_path, check=True,
                   env={"GIT_DIR": str(root / ".git"), "PATH": os.environ["PATH"]})
    recovered = tmp_path / shlex.split(command)[-1]
    live = start_server({**env, "SIMSEARCH_MODEL_PATH": str(recovered)}, tmp_path, log_name="recovered.log")
    try:
        hits = httpx.post(live.url + "/search", params={"k": 1}, timeout=60,
                          files=[upload(cifar["automobile"][0], "q.jpg", "image/jpeg")]).json()["results"]
        assert hits[0]["id"] == "cars/0.jpg" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    finally:
        stop_server(live)


def test_a_model_with_mirror_averaging_finds_an_image_from_its_mirror_image(cifar, tmp_path):
    import io
    from pathlib import Path

    from PIL import Image

    import model
    from .conftest import start_server, stop_server

    weights = Path(__file__).resolve().parents[2] / "model" / "weights"
    planes = cifar["airplane"][:4]
    mirrors = [encode(Image.open(io.BytesIO(b)).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG") for b in planes]
    # A single-view model (the bundled default) sees a mirror image as a different picture...
    single = model.Embedder.from_file(weights / "hybrid1-cifar10.safetensors", device="cpu")
    originals = single.embed([Image.open(io.BytesIO(b)) for b in planes])
    flipped = single.embed([Image.open(io.BytesIO(b)) for b in mirrors])
    assert single.meta.tta == "none" and min((originals * flipped).sum(1)) < 0.95
    # ...the bundled hflip model, served for real, finds the original at cosine 1 from its mirror image.
    live = start_server({"SIMSEARCH_MODEL_PATH": str(weights / "hybrid1-res-cifar10.safetensors"),
                         "SIMSEARCH_DATA_DIR": str(tmp_path / "data"), "SIMSEARCH_API_KEY": "k",
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60, headers={"X-API-Key": "k"}) as c:
            r = c.post("/index", files=[upload(b, f"{i}.jpg", "image/jpeg") for i, b in enumerate(planes)],
                       data={"id": [f"plane-{i}" for i in range(4)]})
            assert r.status_code == 201, r.text
            for i, m in enumerate(mirrors):
                hit = c.post("/search?k=1", files=[upload(m, "mirror.png", "image/png")]).json()["results"][0]
                assert hit["id"] == f"plane-{i}" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        assert "test-time augmentation hflip" in live.log_tail(20_000)
    finally:
        stop_server(live)


def test_every_answer_carries_a_request_id_kept_from_a_sane_caller_and_logged_with_its_request(
        hybrid1_artifact, tmp_path):
    """X-Request-ID: the caller's when it is 1-200 visible ASCII characters, else a new one; on every
    answer (the middlewares' refusals too), in error bodies, and on the request's access log line."""
    import re

    from .conftest import start_server, stop_server

    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_API_KEY": "k", "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path,
                        ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            made = [c.get("/healthz").headers["x-request-id"] for _ in range(2)]
            assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made) and made[0] != made[1]
            assert c.get("/healthz", headers={"X-Request-ID": "gw-7f3a:1"}).headers["x-request-id"] == "gw-7f3a:1"
            for bad in ("has space", "x" * 201, "tab\there", 'say"what', "back\\slash"):   # the gateway's rule
                r = c.get("/healthz", headers={"X-Request-ID": bad})
                assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
            # a route's error and a middleware's refusal (no key for a write) both name the id
            r = c.get("/index/nothing-here", headers={"X-Request-ID": "trace-404"})
            assert r.status_code == 404 and r.json()["error"]["request_id"] == "trace-404"
            r = c.post("/index", files=[upload(png(1))], headers={"X-Request-ID": "trace-401"})
            assert r.status_code == 401 and r.headers["x-request-id"] == "trace-401"
            assert r.json()["error"]["request_id"] == "trace-401"
            r = c.post("/search?k=1", files=[upload(png(2))], headers={"X-Request-ID": "trace-search"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "trace-search"
        deadline = time.monotonic() + 10
        while "trace-search" not in live.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = live.log.read_text().splitlines()
        assert any('"POST /search?k=1 HTTP/1.1" 200' in ln and ln.endswith("request_id=trace-search") for ln in lines)
        # an error's access line names its code (a 400 is empty_file, invalid_image, missing_file, ...)
        assert any(ln.endswith('"GET /index/nothing-here HTTP/1.1" 404 Not Found code=not_found request_id=trace-404')
                   for ln in lines), lines
        assert any(ln.endswith('"POST /index HTTP/1.1" 401 Unauthorized code=missing_api_key request_id=trace-401') for ln in lines)
        assert not any(" code=" in ln for ln in lines if "trace-search" in ln)   # none on a success
        assert not any("has space" in ln for ln in lines)
    finally:
        stop_server(live)


def test_api_keys_rotate_without_a_restart_by_editing_the_key_file(hybrid1_artifact, tmp_path):
    """--api-key-file is read again when it changes: a key added is accepted, a key removed refused,
    and a file emptied or deleted by mistake keeps the keys read before (the service never opens up)."""
    from .conftest import start_server, stop_server

    keys = tmp_path / "keys"

    def write_keys(text: str) -> None:  # as a secret mount updates it: a new file renamed over the old
        (tmp_path / "keys.new").write_text(text)
        (tmp_path / "keys.new").replace(keys)

    write_keys("# the writers' keys\nold-key\n")
    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, ["--api-key-file", str(keys),
                                                                              "--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            def status(key: str) -> int:  # a write that needs the key: 404 once the key is accepted
                return c.delete("/index/absent", headers={"X-API-Key": key}).status_code

            def soon(key: str, want: int) -> bool:
                deadline = time.monotonic() + 10
                while status(key) != want:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.1)
                return True

            assert status("old-key") == 404 and status("new-key") == 403
            assert c.delete("/index/absent").status_code == 401
            write_keys("old-key\nnew-key\n")
            assert soon("new-key", 404) and status("old-key") == 404  # both, while clients move over
            write_keys("new-key\n")
            assert soon("old-key", 403) and status("new-key") == 404
            write_keys("# emptied by mistake\n")
            time.sleep(2.5)
            assert status("new-key") == 404 and status("old-key") == 403
            keys.unlink()
            time.sleep(2.5)
            assert status("new-key") == 404 and status("old-key") == 403
        log = live.log_tail(20_000)
        assert "API keys read from" in log and ": 2 (1 before)" in log and ": 1 (2 before)" in log
        assert "is empty: keeping the 1 keys read before" in log and log.count("is unreadable") == 1  # said once
        assert "old-key" not in log and "new-key" not in log
    finally:
        stop_server(live)


def test_json_logs_are_one_object_a_line_with_the_request_fields(hybrid1_artifact, tmp_path):
    """--log-format json: every line the server writes is a JSON object (startup, the index's own
    lines, access lines, shutdown); access lines carry method, path, status and the request id."""
    from .conftest import start_server, stop_server

    live = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                         "SIMSEARCH_LOG_FORMAT": "json"}, tmp_path, ["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.post("/search?k=1", files=[upload(png(3))], headers={"X-Request-ID": "json-1"}).status_code == 200
            assert c.get("/index/absent", headers={"X-Request-ID": "json-2"}).status_code == 404
            # a key put in the query string is redacted in JSON lines too
            assert c.get("/healthz?api_key=sekrit-json", headers={"X-Request-ID": "json-3"}).status_code == 422
    finally:
        stop_server(live)
    records = [json.loads(line) for line in live.log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    by_id = {r["request_id"]: r for r in records if "request_id" in r}
    assert by_id["json-1"] | {"time": None} == {
        "time": None, "level": "INFO", "logger": "uvicorn.access", "message": by_id["json-1"]["message"],
        "request_id": "json-1", "client": by_id["json-1"]["client"], "method": "POST", "path": "/search?k=1",
        "http_version": "1.1", "status": 200}
    assert by_id["json-2"]["status"] == 404 and by_id["json-2"]["path"] == "/index/absent"
    assert by_id["json-2"]["code"] == "not_found"   # and json-1, a success, has none (compared whole above)
    assert by_id["json-3"]["path"] == "/healthz?api_key=[redacted]" and "sekrit-json" not in live.log.read_text()
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "uvicorn.access", "simsearch.app", "index"} <= loggers
    assert any(r["logger"] == "simsearch.app" and r["message"].startswith("ready in") for r in records)
