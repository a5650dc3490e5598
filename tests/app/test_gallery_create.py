"""Galleries made on purpose, over real HTTP: PUT /galleries/NAME makes one (201, then 200: idempotent), under
the name rules, the key, the cap and read-only as any write; SIMSEARCH_CREATE_GALLERIES_ON_WRITE=false has a
write to a name no gallery has refused (404 naming the nearest names and how to make it) instead of making a
gallery its items land in unseen; and with auto-creation on, the POST /index answer says when it made one."""
from __future__ import annotations

import httpx

from .conftest import start_server, stop_server
from .test_api import assert_error, png, upload

KEY = {"X-API-Key": "create-key"}


def _env(artifact, tmp_path, **extra):
    return {"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
            "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "SIMSEARCH_API_KEY": KEY["X-API-Key"], **extra}


def _names(c: httpx.Client) -> list[str]:
    return [g["name"] for g in c.get("/galleries").json()["galleries"]]


def _vectors(c: httpx.Client, ids: list[str]) -> dict:
    """A JSON POST /index body of unit vectors of the service's model, one per id."""
    listing = c.get("/index").json()
    return {"model": listing["model"],
            "items": [{"id": i, "vector": [1.0 if d == n else 0.0 for d in range(listing["dimension"])]}
                      for n, i in enumerate(ids)]}


def test_put_makes_a_gallery_once_and_answers_it_as_listed_under_the_key_the_names_and_the_cap(
        hybrid1_artifact, tmp_path):
    live = start_server(_env(hybrid1_artifact, tmp_path, SIMSEARCH_MAX_GALLERIES="3"), tmp_path,
                        args=["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert_error(c.put("/galleries/shoes"), 401, "missing_api_key")
            assert_error(c.put("/galleries/Shoes!", headers=KEY), 422, "invalid_parameter", "name")
            assert _names(c) == ["default"]

            made = c.put("/galleries/shoes", headers=KEY)
            assert made.status_code == 201 and made.json() == {"name": "shoes", "count": 0, "open": True}, made.text
            assert (tmp_path / "data" / "galleries" / "shoes" / "index" / "store.sqlite3").is_file()
            assert {"name": "shoes", "count": 0, "open": True} in c.get("/galleries").json()["galleries"]
            # again: nothing changes, 200 (idempotent), after items as well
            assert c.post("/index", params={"gallery": "shoes"}, files=[upload(png(1))], data={"id": "boot"},
                          headers=KEY).status_code == 201
            again = c.put("/galleries/shoes", headers=KEY)
            assert again.status_code == 200 and again.json() == {"name": "shoes", "count": 1, "open": True}, again.text
            assert c.get("/index", params={"gallery": "shoes"}).json()["count"] == 1
            default = c.put("/galleries/default", headers=KEY)
            assert default.status_code == 200 and default.json()["name"] == "default", default.text

            assert c.put("/galleries/hats", headers=KEY).status_code == 201   # the third, with the default one
            assert_error(c.put("/galleries/caps", headers=KEY), 422, "too_many_galleries", "'caps'", "at most 3")
            assert not (tmp_path / "data" / "galleries" / "caps").exists()
            assert _names(c) == ["default", "hats", "shoes"]
            assert c.put("/galleries/hats", headers=KEY).status_code == 200   # one there: never capped
    finally:
        stop_server(live)
    log = live.log.read_text(errors="replace")
    assert "Traceback" not in log
    assert log.count("gallery shoes made by PUT /galleries/shoes: 0 items") == 1, log[-3000:]


def test_a_write_that_makes_its_gallery_says_so_once_in_the_answer_and_the_log(hybrid1_artifact, tmp_path):
    live = start_server(_env(hybrid1_artifact, tmp_path), tmp_path, args=["--log-level", "info"])
    try:
        with httpx.Client(base_url=live.url, timeout=60, headers=KEY) as c:
            first = c.post("/index", params={"gallery": "shoes"}, files=[upload(png(1))], data={"id": "boot"})
            assert first.status_code == 201 and first.json() == {"ids": ["boot"], "count": 1, "skipped": [],
                                                                 "gallery_created": True}, first.text
            second = c.post("/index", params={"gallery": "shoes"}, files=[upload(png(2))], data={"id": "clog"})
            assert second.status_code == 201 and "gallery_created" not in second.json(), second.text
            home = c.post("/index", files=[upload(png(3))], data={"id": "home"})
            assert home.status_code == 201 and "gallery_created" not in home.json(), home.text
            # vectors as JSON too
            hats = c.post("/index", params={"gallery": "hats"}, json=_vectors(c, ["cap"]))
            assert hats.status_code == 201 and hats.json()["gallery_created"] is True, hats.text
            # a read of a misspelt name: the 404 names the gallery meant
            assert_error(c.get("/index", params={"gallery": "shoe"}), 404, "gallery_not_found",
                         "'shoe'", "did you mean 'shoes'?", "POST /index?gallery=NAME makes one")
            spec = c.get("/openapi.json").json()
    finally:
        stop_server(live)
    log = live.log.read_text(errors="replace")
    assert "Traceback" not in log
    made = [line for line in log.splitlines() if "gallery shoes made" in line]
    assert len(made) == 1 and "INFO" in made[0] and "POST /index" in made[0], made
    answer = spec["components"]["schemas"]["IndexResponse"]["properties"]["gallery_created"]
    assert answer["type"] == "boolean" and "made the gallery" in answer["description"]
    assert "404" in spec["paths"]["/index"]["post"]["responses"]
    put = spec["paths"]["/galleries/{name}"]["put"]
    for status in ("200", "201"):
        assert put["responses"][status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/GalleryOut"}, (status, put["responses"][status])
    assert put["security"] and {"401", "403", "422", "507"} <= set(put["responses"])


def test_without_auto_creation_a_write_to_a_misspelt_gallery_stores_nothing_and_says_how_to_make_it(
        hybrid1_artifact, tmp_path):
    env = _env(hybrid1_artifact, tmp_path, SIMSEARCH_CREATE_GALLERIES_ON_WRITE="false")
    live = start_server(env, tmp_path)
    try:
        with httpx.Client(base_url=live.url, timeout=60, headers=KEY) as c:
            assert c.put("/galleries/shoes", headers=KEY).status_code == 201
            for r in (c.post("/index", params={"gallery": "shoe"}, files=[upload(png(1))], data={"id": "boot"}),
                      c.post("/index", params={"gallery": "shoe"}, json=_vectors(c, ["boot"]))):
                assert_error(r, 404, "gallery_not_found", "no gallery named 'shoe'", "did you mean 'shoes'?",
                             "PUT /galleries/shoe", "SIMSEARCH_CREATE_GALLERIES_ON_WRITE")
            assert_error(c.post("/index", params={"gallery": "zzz"}, files=[upload(png(1))]), 404,
                         "gallery_not_found", "PUT /galleries/zzz")
            assert "did you mean" not in c.post("/index", params={"gallery": "zzz"}, files=[upload(png(1))]).text
            assert _names(c) == ["default", "shoes"] and not (tmp_path / "data" / "galleries" / "shoe").exists()
            # reads and the other writes say how to make one too
            assert_error(c.get("/index", params={"gallery": "shoe"}), 404, "gallery_not_found", "PUT /galleries/shoe")
            assert_error(c.patch("/index/boot", params={"gallery": "shoe"}, json={"label": "x"}), 404,
                         "gallery_not_found", "PUT /galleries/shoe")
            # the gallery made on purpose, and the default one, take writes as always
            stored = c.post("/index", params={"gallery": "shoes"}, files=[upload(png(1))], data={"id": "boot"})
            assert stored.status_code == 201 and stored.json() == {"ids": ["boot"], "count": 1, "skipped": []}
            assert c.post("/index", files=[upload(png(2))], data={"id": "home"}).status_code == 201
            assert [g["count"] for g in c.get("/galleries").json()["galleries"]] == [1, 1]
    finally:
        stop_server(live)
    assert "Traceback" not in live.log.read_text(errors="replace")
    # a read-only replica of the same folder refuses PUT as any write
    replica = start_server({**env, "SIMSEARCH_READ_ONLY": "true"}, tmp_path, log_name="replica.log")
    try:
        r = httpx.put(replica.url + "/galleries/hats", headers=KEY, timeout=60)
        assert_error(r, 405, "read_only")
        assert r.headers["allow"] == "GET, HEAD"
        assert_error(httpx.get(replica.url + "/index", params={"gallery": "shoe"}), 404, "gallery_not_found",
                     "read-only", "did you mean 'shoes'?")
    finally:
        stop_server(replica)
