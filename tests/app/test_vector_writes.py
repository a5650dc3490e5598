"""Writing vectors over HTTP: POST /index with a JSON body {"model": ..., "items": [{"id", "vector", "label",
"metadata"}, ...]}, against a real `simsearch serve` process. A vector taken from an image item and written under
a new id is that item's nearest neighbour; every refusal names the item and what is wrong, and stores nothing; a
restart keeps what was written; a read-only replica refuses the write."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload

KEY = "vectors-key"
MAX_ITEMS = 4   # SIMSEARCH_MAX_FILES_PER_REQUEST of the module's server: the most items one JSON body may carry


def _env(artifact, data) -> dict[str, str]:
    return {"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(data), "SIMSEARCH_API_KEY": KEY,
            "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_MAX_FILES_PER_REQUEST": str(MAX_ITEMS)}


@pytest.fixture(scope="module")
def live(hybrid1_artifact, tmp_path_factory):
    """A writer holding two image items, `img` (label cat) and `other`."""
    work = tmp_path_factory.mktemp("vectors")
    server = start_server(_env(hybrid1_artifact, work / "data"), work)
    r = httpx.post(server.url + "/index", headers={"X-API-Key": KEY}, files=[upload(png(1)), upload(png(2))],
                   data={"id": ["img", "other"], "label": "cat"}, timeout=60)
    assert r.status_code == 201, r.text
    yield server
    stop_server(server)
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail()


def _vector_of(url: str, id: str) -> list[float]:
    r = httpx.get(f"{url}/index/{id}", params={"vector": "true"})
    assert r.status_code == 200, r.text
    return r.json()["vector"]


def _write(url: str, items: list[dict], model: str | None = None, params: dict | None = None) -> httpx.Response:
    model = model or httpx.get(url + "/index").json()["model"]
    return httpx.post(url + "/index", json={"model": model, "items": items}, params=params,
                      headers={"X-API-Key": KEY}, timeout=60)


def test_a_vector_of_an_image_item_written_under_a_new_id_is_that_items_nearest_neighbour(live):
    vector = _vector_of(live.url, "img")
    r = _write(live.url, [{"id": "copy", "vector": vector, "label": "dog", "metadata": {"src": "phone", "n": 3}}])
    assert r.status_code == 201, r.text
    assert r.json() == {"ids": ["copy"], "count": 1, "skipped": []}
    position = r.headers["x-simsearch-position"]
    hits = httpx.post(live.url + "/search/img?k=1").json()["results"]
    assert hits[0]["id"] == "copy" and hits[0]["distance"] < 1e-3, hits
    assert hits[0]["label"] == "dog" and hits[0]["metadata"] == {"src": "phone", "n": 3}
    item = httpx.get(live.url + "/index/copy", headers={"X-Simsearch-After": position})
    assert item.json() == {"id": "copy", "label": "dog", "metadata": {"src": "phone", "n": 3}}
    # as a JSON search vector is: another length of the same direction is stored as the unit vector
    r = _write(live.url, [{"id": "scaled", "vector": [3 * x for x in vector]}])
    assert r.status_code == 201, r.text
    stored = np.array(_vector_of(live.url, "scaled"))
    assert np.linalg.norm(stored) == pytest.approx(1, abs=1e-5) and np.allclose(stored, vector, atol=1e-5)
    # no image was sent, so there is no thumbnail: the 404 of any item stored without one
    assert_error(httpx.get(live.url + "/index/copy/thumbnail"), 404, "not_found", "'copy'", "without one")


def test_several_vectors_are_written_in_one_request_under_generated_ids_when_none_is_given(live):
    vectors = [_vector_of(live.url, "img"), _vector_of(live.url, "other")]
    r = _write(live.url, [{"vector": vectors[0]}, {"id": "second", "vector": vectors[1], "label": None}])
    assert r.status_code == 201, r.text
    first, second = r.json()["ids"]
    assert len(first) == 32 and second == "second" and r.json()["count"] == 2
    assert httpx.get(f"{live.url}/index/{first}").json() == {"id": first, "label": None, "metadata": {}}


def test_skip_duplicates_and_gallery_apply_to_written_vectors_as_to_images(live):
    vector = _vector_of(live.url, "img")
    r = _write(live.url, [{"id": "again", "vector": vector}], params={"skip_duplicates": 0.98})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["ids"] == [] and body["count"] == 0
    assert body["skipped"][0]["file"] == 0 and body["skipped"][0]["id"] == "again"
    assert body["skipped"][0]["duplicate_of"] in {"img", "copy", "scaled"}
    assert httpx.get(live.url + "/index/again").status_code == 404
    r = _write(live.url, [{"id": "elsewhere", "vector": vector}], params={"gallery": "vecs"})
    assert r.status_code == 201, r.text
    listing = httpx.get(live.url + "/index", params={"gallery": "vecs"}).json()
    assert listing["count"] == 1 and listing["items"][0]["id"] == "elsewhere"


def _refusals(dim: int, model: str) -> list[tuple[object, int, str, tuple[str, ...]]]:
    """(body, status, code, words of the message) of JSON bodies that POST /index refuses."""
    good = [0.0] * dim
    good[0] = 1.0

    def item(**kw):
        return {"model": model, "items": [{"id": "fine", "vector": good}, {"vector": good, **kw}]}

    return [
        ({"items": [{"vector": good}]}, 422, "invalid_vector", ('"model"', "required")),
        ({"model": None, "items": [{"vector": good}]}, 422, "invalid_vector", ('"model"', "required")),
        ({"model": "other@000000000000", "items": [{"vector": good}]}, 409, "model_mismatch",
         ("'other@000000000000'", model)),
        ({"model": 5, "items": [{"vector": good}]}, 422, "invalid_vector", ("model must be a string",)),
        ({"model": model, "vectors": [good]}, 422, "invalid_vector", ('"items"', "['model', 'vectors']")),
        ([good], 422, "invalid_vector", ('"items"', "list")),
        ({"model": model, "items": []}, 422, "invalid_vector", ("non-empty",)),
        ({"model": model, "items": {"vector": good}}, 422, "invalid_vector", ("non-empty list",)),
        ({"model": model, "items": [{"vector": good}] * (MAX_ITEMS + 1)}, 413, "too_many_vectors",
         (f"{MAX_ITEMS + 1} items", f"at most {MAX_ITEMS}", "SIMSEARCH_MAX_FILES_PER_REQUEST")),
        ({"model": model, "items": ["not an item"]}, 422, "invalid_vector", ("items[0]", "object", "str")),
        (item(id="fine"), 422, "invalid_id", ("items[0]", "items[1]", "'fine'")),
        (item(payload={}), 422, "invalid_vector", ("items[1]", "['payload', 'vector']")),
        ({"model": model, "items": [{"id": "fine", "vector": good}, {"id": "no-vector"}]}, 422, "invalid_vector",
         ("items[1]", '"vector"')),
        (item(vector=good[:-1]), 422, "invalid_vector", ("items[1]", f"list of {dim} numbers", f"{dim - 1} values")),
        (item(vector=[0.0] * dim), 422, "invalid_vector", ("items[1]", "non-zero")),
        (item(vector=good[:2] + ["x"] + good[3:]), 422, "invalid_vector", ("items[1]", "vector[2]", '"x"')),
        (item(vector=good[:2] + [True] + good[3:]), 422, "invalid_vector", ("items[1]", "vector[2]", "true")),
        (item(id="a/../b"), 422, "invalid_id", ("items[1]", "'a/../b'")),
        (item(id=" padded"), 422, "invalid_id", ("items[1]", "' padded'")),
        (item(id=5), 422, "invalid_id", ("items[1]", "string", "5")),
        (item(label="a\u202eb"), 422, "invalid_label", ("items[1]", "label")),
        (item(label="x" * 257), 422, "invalid_label", ("items[1]", "256")),
        (item(label=["cat"]), 422, "invalid_label", ("items[1]", "string or null", '["cat"]')),
        (item(metadata=[1]), 422, "invalid_metadata", ("items[1]", "JSON object", "list")),
        (item(metadata={"x": "\ud800"}), 422, "invalid_metadata", ("items[1]",)),
    ]


def test_each_json_body_post_index_refuses_names_the_item_and_what_is_wrong_and_stores_nothing(live):
    info = httpx.get(live.url + "/index").json()
    dim, model, count = info["dimension"], info["model"], info["count"]
    key = {"X-API-Key": KEY}
    for body, status, code, words in _refusals(dim, model):
        r = httpx.post(live.url + "/index", params={"gallery": "refused"}, content=json.dumps(body),   # "\ud800" too
                       headers={**key, "Content-Type": "application/json"}, timeout=60)
        assert_error(r, status, code, *words)
    big = json.dumps({"model": model, "items": [{"vector": [12345.0] + [0.0] * (dim - 1)}]})   # 1e999: an infinity
    r = httpx.post(live.url + "/index", content=big.replace("12345.0", "1e999"),
                   headers={**key, "Content-Type": "application/json"})
    assert_error(r, 422, "invalid_vector", "items[0]", "finite")
    # an integer past a float's range, written out (valid JSON): was a 500 (numpy's OverflowError), here and in search
    huge = big.replace("12345.0", "1" + "0" * 309)
    r = httpx.post(live.url + "/index", content=huge, headers={**key, "Content-Type": "application/json"})
    assert_error(r, 422, "invalid_vector", "items[0]", "too large for a float")
    query = json.dumps({"vector": [12345.0] + [0.0] * (dim - 1)}).replace("12345.0", "1" + "0" * 309)
    r = httpx.post(live.url + "/search", content=query, headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_vector", "too large for a float")
    big_meta = json.dumps({"model": model, "items": [{"vector": [1.0] * dim, "metadata": {"n": 1}}]})
    r = httpx.post(live.url + "/index", content=big_meta.replace('"n": 1', '"n": 1e999'),
                   headers={**key, "Content-Type": "application/json"})
    assert_error(r, 422, "invalid_metadata", "items[0]")
    assert_error(httpx.post(live.url + "/index", content=b'{"model": NaN}', headers={**key, "Content-Type":
                                                                                        "application/json"}),
                 422, "invalid_vector", "not valid JSON")
    good = {"model": model, "items": [{"vector": [1.0] * dim}]}
    assert_error(httpx.post(live.url + "/index?crop=0,0,0.5,0.5", json=good, headers=key), 422,
                 "invalid_parameter", "crop")
    assert_error(httpx.post(live.url + "/index", json=good), 401, "missing_api_key")
    assert httpx.get(live.url + "/index").json()["count"] == count   # nothing of any of them was stored
    assert "refused" not in [g["name"] for g in httpx.get(live.url + "/galleries").json()["galleries"]]


def test_the_most_items_one_json_body_may_carry_is_the_most_files_a_form_may(live):
    dim = httpx.get(live.url + "/index").json()["dimension"]
    items = [{"id": f"max{i}", "vector": [float(i + 1)] + [1.0] * (dim - 1)} for i in range(MAX_ITEMS)]
    r = _write(live.url, items)
    assert r.status_code == 201 and r.json()["count"] == MAX_ITEMS, r.text


def test_written_vectors_survive_a_restart_and_a_read_only_replica_refuses_to_write_them(hybrid1_artifact, tmp_path):
    env = _env(hybrid1_artifact, tmp_path / "data")
    server = start_server(env, tmp_path, log_name="first.log")
    try:
        r = httpx.post(server.url + "/index", headers={"X-API-Key": KEY}, files=[upload(png(4))], data={"id": "img"})
        assert r.status_code == 201, r.text
        vector = _vector_of(server.url, "img")
        r = _write(server.url, [{"id": "kept", "vector": vector, "label": "cat", "metadata": {"k": 1}}])
        assert r.status_code == 201, r.text
    finally:
        stop_server(server)   # acknowledged (201) means durable: a restart must find it
    server = start_server(env, tmp_path, log_name="second.log")
    try:
        assert httpx.get(server.url + "/index/kept").json() == {"id": "kept", "label": "cat", "metadata": {"k": 1}}
        assert np.allclose(_vector_of(server.url, "kept"), vector, atol=1e-6)
        hits = httpx.post(server.url + "/search/img?k=1").json()["results"]
        assert hits[0]["id"] == "kept" and hits[0]["distance"] < 1e-3, hits
        replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true"}, tmp_path, log_name="replica.log")
        try:
            r = _write(replica.url, [{"id": "refused", "vector": vector}])
            assert_error(r, 405, "read_only", "read-only")
            assert r.headers["allow"] == "GET, HEAD"
            assert httpx.get(replica.url + "/index/kept").status_code == 200
            assert httpx.get(replica.url + "/index/refused").status_code == 404
        finally:
            stop_server(replica)
    finally:
        stop_server(server)
